//! Tessera: a payment-card tokenization vault.
//!
//! Tessera swaps card numbers (PANs) for format-preserving tokens over gRPC.
//! The PAN is kept only as AES-256-GCM ciphertext in an append-only store,
//! under per-tenant data keys that a KMS keeps wrapped (envelope encryption).
//! Systems that hold only tokens leave PCI DSS scope.
//!
//! # Data flow
//!
//! ```text
//! tokenize:   gRPC -> service (authenticate API key, check role) -> convert (parse Pan)
//!             -> vault: [deterministic? HMAC fingerprint -> existing live token]
//!             -> tokens (random | FF1) -> token id = HMAC(tenant key, token)
//!             -> envelope::seal (record key = HKDF(DEK, token id); AAD binds tenant, id, DEK version)
//!             -> store.append (never overwrites; unique id and live fingerprint) -> response
//! detokenize: gRPC -> service -> vault: token id -> store.get -> live? (TTL, tombstone)
//!             -> keyring (DEK version from the envelope header; unwrapped once, cached)
//!             -> envelope::open -> single use? tombstone (exactly one winner) -> PAN
//! ```
//!
//! # Layout
//!
//! | module | job |
//! |---|---|
//! | [`domain`] | `Pan`, `Token`, `TokenId`, `Fingerprint`, `TenantId`, `Principal`, brands, the FAQ 1091 disclosure rule |
//! | [`tokens`] | token formats, the Luhn check, random (whole-bucket) and FF1 generators |
//! | [`envelope`] | sealing and opening records (AES-256-GCM, HKDF record keys, versioned header) |
//! | [`kms`] | the `Kms` trait (wrap and unwrap data keys) and the dev backend |
//! | [`keyring`] | caches unwrapped keys; derives the per-tenant index keys |
//! | [`store`] | the append-only `Store` trait, its record encodings, sled and memory backends |
//! | [`vault`] | use cases: tokenize, detokenize, info, delete, batches' rules |
//! | [`access`] | API keys, roles and scopes, principals, TOTP, admin sessions, dual control, limits, refusal tallies |
//! | [`audit`] | the hash-chained, signed audit log and its verification |
//! | [`cardfile`] | CSV and JSON Lines card files for import and export: rows, checkpoints, progress |
//! | [`shared`] | what replicas share through the store (sealed entries, the change feed) |
//! | [`service`] | the tonic `Tokenizer` impl, wire conversion, status mapping |
//! | [`server`] | wiring from config, serving with health and reflection, graceful drain |
//! | [`config`] | TOML + environment configuration, checked once at start |
//! | [`cli`] | the `tessera` command line |
//! | [`telemetry`] | logging and the Prometheus metrics endpoint |
//! | [`proto`] | checked-in generated gRPC code |
//! | [`secret`], [`csprng`], [`codec`], [`clock`], [`leak`], [`devcreds`] | small shared pieces |
//!
//! # Layering
//!
//! `domain`, `tokens`, `envelope` and `vault` never import tonic, prost or
//! sled; `kms` and `store` name no vendor type in their traits. Only
//! `service`, `server`, `proto` and `cli` see wire types. Every error that
//! reaches a caller is built in `service::status`, and no error, log line or
//! `Debug` output carries a PAN or a token's hidden digits.
#![forbid(unsafe_code)]

pub mod access;
pub mod audit;
pub mod cardfile;
pub mod cli;
pub mod clock;
pub mod codec;
pub mod config;
pub mod csprng;
pub mod devcreds;
pub mod domain;
pub mod envelope;
pub mod huge_pages;
pub mod keyring;
pub mod kms;
pub mod leak;
pub mod pipeline;
pub mod private_file;
pub mod proto;
pub mod secret;
pub mod server;
pub mod service;
pub mod shared;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod tokens;
pub mod vault;
