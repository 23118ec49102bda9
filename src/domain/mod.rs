//! Domain types: PANs, tokens, tenants and principals. No I/O, no wire types.

pub mod brand;
pub mod disclosure;
pub mod key;
pub mod pan;
pub mod principal;
pub mod tenant;
pub mod token;

pub use brand::CardBrand;
pub use pan::{MaskedPan, Pan, PanError};
pub use principal::{Principal, Role};
pub use tenant::TenantId;
pub use token::{Fingerprint, Token, TokenError, TokenId};
