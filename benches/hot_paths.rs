//! Criterion benches of the per-request hot paths: PAN parsing, token
//! generation (random and FF1), sealing and opening a record, and the
//! authentication every call makes (API key lookup, client-certificate
//! identities under mTLS, the admin TOTP check).
//!
//! Run: `cargo bench --bench hot_paths`. Numbers go to BENCHMARKS.md.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tessera::access::principals::{NewPrincipal, PrincipalBook};
use tessera::access::totp::{OtpVerifier, TotpSecret};
use tessera::domain::{Pan, Role, TenantId, TokenId};
use tessera::envelope::{self, Binding};
use tessera::secret::DataKey;
use tessera::tokens::ff1::Ff1Generator;
use tessera::tokens::random::RandomGenerator;
use tessera::tokens::{GeneratorKind, LuhnPolicy, TokenFormat, TokenGenerator};

const PAN16: &str = "4111 1111 1111 1111";
const PAN19: &str = "6011000990139424009";

fn pan_parse(c: &mut Criterion) {
    c.bench_function("pan/parse_16_with_spaces", |b| {
        b.iter(|| Pan::parse(black_box(PAN16)))
    });
}

fn token_generation(c: &mut Criterion) {
    let pan = Pan::parse(PAN16).unwrap_or_else(|_| unreachable_bench());
    let pan19 = Pan::parse(PAN19).unwrap_or_else(|_| unreachable_bench());
    let default = TokenFormat::default();
    c.bench_function("token/random_16_keep_6_4", |b| {
        b.iter(|| RandomGenerator.generate(black_box(&pan), &default, 0))
    });
    let ff1 = Ff1Generator::new(
        &DataKey::from_bytes([7; 32]),
        TenantId::new("bench").unwrap_or_else(|_| unreachable_bench()),
    );
    let any = TokenFormat::new(GeneratorKind::Ff1, 6, 4, LuhnPolicy::Any)
        .unwrap_or_else(|_| unreachable_bench());
    let invalid = TokenFormat::new(GeneratorKind::Ff1, 6, 4, LuhnPolicy::Invalid)
        .unwrap_or_else(|_| unreachable_bench());
    c.bench_function("token/ff1_16_keep_6_4_any", |b| {
        b.iter(|| ff1.generate(black_box(&pan), &any, 0))
    });
    c.bench_function("token/ff1_19_keep_6_4_invalid", |b| {
        b.iter(|| ff1.generate(black_box(&pan19), &invalid, 0))
    });
}

fn envelope_seal_open(c: &mut Criterion) {
    let dek = DataKey::from_bytes([9; 32]);
    let tenant = TenantId::new("bench").unwrap_or_else(|_| unreachable_bench());
    let id = TokenId::from_bytes([1; 32]);
    let binding = Binding {
        tenant: &tenant,
        token_id: &id,
        dek_version: 1,
    };
    let payload = b"\x104111111111111111411111000000111";
    c.bench_function("envelope/seal", |b| {
        b.iter(|| envelope::seal(&dek, binding, black_box(payload)))
    });
    let sealed = envelope::seal(&dek, binding, payload).unwrap_or_else(|_| unreachable_bench());
    c.bench_function("envelope/open", |b| {
        b.iter(|| envelope::open(&dek, binding, black_box(&sealed)))
    });
}

fn authentication(c: &mut Criterion) {
    let book = PrincipalBook::open(Vec::new(), None).unwrap_or_else(|_| unreachable_bench());
    let tenant = TenantId::new("default").unwrap_or_else(|_| unreachable_bench());
    let mut key = String::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap_or_else(|_| unreachable_bench());
    for n in 0..1000 {
        let issued = runtime
            .block_on(book.add(NewPrincipal {
                name: format!("pos-{n}"),
                tenant: tenant.clone(),
                roles: [Role::Tokenize].into_iter().collect(),
                cert_identity: Some(format!("spiffe://tessera/pos-{n}")),
                created_by: None,
                created_at_ms: 0,
            }))
            .unwrap_or_else(|_| unreachable_bench());
        key = issued.api_key.expose_secret().to_owned();
    }
    c.bench_function("auth/api_key_1000_principals", |b| {
        b.iter(|| book.authenticate_key(black_box(&key)))
    });
    let ca =
        tessera::tls::pki::Authority::generate("bench CA", tessera::tls::pki::Validity::days(1))
            .unwrap_or_else(|_| unreachable_bench());
    let client = ca
        .issue_client(
            "spiffe://tessera/pos-999",
            tessera::tls::pki::Validity::days(1),
        )
        .unwrap_or_else(|_| unreachable_bench());
    let der = tessera::tls::pki::pem_to_der(&client.cert_pem).unwrap_or_else(unreachable_bench);
    c.bench_function("auth/client_cert_identity", |b| {
        b.iter(|| {
            let ids = tessera::tls::certificate_identities(black_box(&der));
            book.authenticate_cert(&ids)
        })
    });
    let secret = TotpSecret::generate().unwrap_or_else(|_| unreachable_bench());
    let verifier = OtpVerifier::new(std::time::Duration::from_secs(30));
    let now = std::time::SystemTime::now();
    c.bench_function("auth/totp_verify_wrong_code", |b| {
        b.iter(|| verifier.verify("ops", &secret, black_box(Some("000000")), now))
    });
}

#[cold]
fn unreachable_bench<T>() -> T {
    // Bench inputs are constants known to be valid; reaching this means the
    // library changed under the bench, which should stop it loudly.
    std::process::abort()
}

criterion_group!(
    benches,
    pan_parse,
    token_generation,
    envelope_seal_open,
    authentication
);
criterion_main!(benches);
