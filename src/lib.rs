//! Tessera: a payment-card tokenization vault.
#![forbid(unsafe_code)]

pub mod clock;
pub mod codec;
pub mod config;
pub mod csprng;
pub mod domain;
pub mod envelope;
pub mod keyring;
pub mod kms;
pub mod leak;
pub mod secret;
pub mod store;
pub mod tokens;
pub mod vault;
