//! Wire types to domain types and back. Every field check lives here and
//! names the field it failed on; no value is ever echoed.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::Status;

use crate::domain::{CardBrand, Pan, Token};
use crate::proto::v1;
use crate::service::status::invalid_argument;
use crate::tokens::{GeneratorKind, LuhnPolicy};
use crate::vault::{FormatRequest, TokenInfo, TokenizeCommand, Tokenized};

impl TryFrom<v1::TokenizeRequest> for TokenizeCommand {
    type Error = Status;

    fn try_from(mut req: v1::TokenizeRequest) -> Result<Self, Status> {
        let pan = Pan::parse(&req.pan);
        zeroize::Zeroize::zeroize(&mut req.pan);
        let pan = pan.map_err(|e| invalid_argument("pan", &e.to_string()))?;
        let format = match req.format {
            Some(f) => format_request(&f)?,
            None => FormatRequest::default(),
        };
        let ttl = req.ttl.map(duration).transpose()?;
        Ok(Self {
            pan,
            format,
            deterministic: req.deterministic,
            ttl,
            single_use: req.single_use,
            metadata: req.metadata.into_iter().collect::<BTreeMap<_, _>>(),
        })
    }
}

fn format_request(f: &v1::TokenFormat) -> Result<FormatRequest, Status> {
    let generator = match v1::Generator::try_from(f.generator) {
        Ok(v1::Generator::Unspecified) => None,
        Ok(v1::Generator::Random) => Some(GeneratorKind::Random),
        Ok(v1::Generator::Ff1) => Some(GeneratorKind::Ff1),
        Err(_) => return Err(invalid_argument("format.generator", "unknown generator")),
    };
    let luhn = match v1::LuhnPolicy::try_from(f.luhn) {
        Ok(v1::LuhnPolicy::Unspecified) => None,
        Ok(v1::LuhnPolicy::Invalid) => Some(LuhnPolicy::Invalid),
        Ok(v1::LuhnPolicy::Valid) => Some(LuhnPolicy::Valid),
        Ok(v1::LuhnPolicy::Any) => Some(LuhnPolicy::Any),
        Err(_) => return Err(invalid_argument("format.luhn", "unknown Luhn policy")),
    };
    Ok(FormatRequest {
        generator,
        keep_leading: f.keep_leading,
        keep_trailing: f.keep_trailing,
        luhn,
    })
}

fn duration(d: prost_types::Duration) -> Result<Duration, Status> {
    let secs =
        u64::try_from(d.seconds).map_err(|_| invalid_argument("ttl", "must not be negative"))?;
    let nanos =
        u32::try_from(d.nanos).map_err(|_| invalid_argument("ttl", "must not be negative"))?;
    if nanos >= 1_000_000_000 {
        return Err(invalid_argument("ttl", "nanos out of range"));
    }
    Ok(Duration::new(secs, nanos))
}

/// Parses the `token` field of a request.
pub fn token(text: &str) -> Result<Token, Status> {
    Token::parse(text).map_err(|e| invalid_argument("token", &e.to_string()))
}

/// Domain brand to wire brand.
pub fn brand(b: CardBrand) -> v1::CardBrand {
    match b {
        CardBrand::Visa => v1::CardBrand::Visa,
        CardBrand::Mastercard => v1::CardBrand::Mastercard,
        CardBrand::Amex => v1::CardBrand::Amex,
        CardBrand::Discover => v1::CardBrand::Discover,
        CardBrand::Jcb => v1::CardBrand::Jcb,
        CardBrand::UnionPay => v1::CardBrand::Unionpay,
        CardBrand::Diners => v1::CardBrand::Diners,
        CardBrand::Maestro => v1::CardBrand::Maestro,
        _ => v1::CardBrand::Unknown,
    }
}

impl From<Tokenized> for v1::TokenizeResponse {
    fn from(t: Tokenized) -> Self {
        Self {
            token: t.token.as_str().to_owned(),
            masked_pan: t.masked_pan.as_str().to_owned(),
            brand: brand(t.brand).into(),
            reused: t.reused,
        }
    }
}

fn timestamp(ms: u64) -> prost_types::Timestamp {
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    prost_types::Timestamp::from(
        t.max(UNIX_EPOCH)
            .min(SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799)),
    )
}

impl From<TokenInfo> for v1::TokenInfo {
    fn from(info: TokenInfo) -> Self {
        Self {
            masked_pan: info.masked_pan.as_str().to_owned(),
            brand: brand(info.brand).into(),
            created_at: Some(timestamp(info.created_at_ms)),
            expires_at: info.expires_at_ms.map(timestamp),
            single_use: info.single_use,
            metadata: info.metadata.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn tokenize_request_conversion() {
        let req = v1::TokenizeRequest {
            pan: "4111-1111-1111-1111".into(),
            format: Some(v1::TokenFormat {
                generator: v1::Generator::Ff1.into(),
                keep_leading: Some(0),
                keep_trailing: None,
                luhn: v1::LuhnPolicy::Valid.into(),
            }),
            ttl: Some(prost_types::Duration {
                seconds: 5,
                nanos: 0,
            }),
            ..Default::default()
        };
        let cmd = TokenizeCommand::try_from(req).unwrap();
        assert_eq!(cmd.format.generator, Some(GeneratorKind::Ff1));
        assert_eq!(cmd.format.keep_leading, Some(0));
        assert_eq!(cmd.format.luhn, Some(LuhnPolicy::Valid));
        assert_eq!(cmd.ttl, Some(Duration::from_secs(5)));
    }

    #[test]
    fn bad_fields_name_themselves_and_never_echo() {
        let cases = [
            (
                v1::TokenizeRequest {
                    pan: "4111111111111112".into(),
                    ..Default::default()
                },
                "pan",
            ),
            (
                v1::TokenizeRequest {
                    pan: "4111111111111111".into(),
                    format: Some(v1::TokenFormat {
                        generator: 99,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "format.generator",
            ),
            (
                v1::TokenizeRequest {
                    pan: "4111111111111111".into(),
                    ttl: Some(prost_types::Duration {
                        seconds: -1,
                        nanos: 0,
                    }),
                    ..Default::default()
                },
                "ttl",
            ),
        ];
        for (req, field) in cases {
            let status = TokenizeCommand::try_from(req).unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(status.message().contains(field));
            assert!(!status.message().contains("4111"));
        }
    }
}
