//! Session tokens: what a JWT says about its bearer and how it is checked.
//!
//! user-service *signs* tokens with an Ed25519 private key ([`TokenSigner`]); the gateway only holds the public key
//! and *verifies* them ([`TokenVerifier`]), so a compromised gateway cannot mint sessions. The algorithm is pinned to
//! EdDSA: a token whose header claims anything else (HS256 with the public key as the "secret", `none`, …) is rejected
//! before any signature check. `exp`, `iat` and `sub` are all checked here because jsonwebtoken only checks `exp` by
//! default and never looks at `iat`.
//!
//! Errors are typed ([`AuthError`]) so the gateway can log *why* a token was refused while answering every client the
//! same way; no error ever carries the token itself.

use std::fmt;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Clock skew tolerated between the signing and the verifying host, for both `exp` and `iat`.
pub const CLOCK_SKEW_LEEWAY_SECS: u64 = 60;

/// DEVELOPMENT-ONLY Ed25519 private key (PKCS#8 PEM) used to sign tokens on a developer machine.
///
/// **Never use this key in production.** It is public — it is in the source tree — so anyone can mint a token for
/// any user with it. Production mode refuses to start with it (that check lives in the configuration); generate a
/// real pair with `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout`.
pub const DEV_PRIVATE_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIALnnCwn2mFnB0O2D11b80GVkJb6SOhknS8fo4hphUXj
-----END PRIVATE KEY-----
";

/// DEVELOPMENT-ONLY Ed25519 public key (SPKI PEM) matching [`DEV_PRIVATE_KEY_PEM`].
///
/// **Never use this key in production**: tokens it accepts can be forged by anyone who has read this file.
pub const DEV_PUBLIC_KEY_PEM: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEA9vbb8fsKPFK+P3+9oNsFc+ZplBFLgRivGavZovg7MOw=
-----END PUBLIC KEY-----
";

/// Whether `pem` is one of the development keys, however its lines are broken or ended (a key file saved with
/// CRLF line endings, or its newlines written as `\n`, is still the development key).
pub fn is_development_key(pem: &str) -> bool {
    let bare = |text: &str| text.split_whitespace().collect::<String>();
    let given = bare(pem);
    given == bare(DEV_PRIVATE_KEY_PEM) || given == bare(DEV_PUBLIC_KEY_PEM)
}

/// The claims Warren puts in a session token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id as a decimal string (JWT requires `sub` to be a string).
    pub sub: String,
    /// Issued-at, Unix seconds.
    pub iat: i64,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// The username at the time of issue, so the gateway can show it without asking user-service.
    pub name: String,
    /// When the session began: the sign-in (Unix seconds) that the first of its tokens was issued for. Refreshed
    /// tokens carry it on, which bounds how long refreshing can keep a session alive. Tokens signed before
    /// refreshing existed lack it; their `iat` stands in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
}

/// The identity a valid token proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedUser {
    /// Always positive.
    pub user_id: i64,
    pub username: String,
    /// The last moment (Unix seconds) the token is accepted: its `exp` plus the clock-skew leeway. A session
    /// opened with it (a WebSocket) ends then.
    pub valid_until: i64,
    /// When the session's sign-in happened (Unix seconds): `auth_time`, or `iat` for older tokens.
    pub signed_in_at: i64,
}

impl VerifiedUser {
    /// How long the token is still accepted, from `now` (Unix seconds); zero once it is not.
    pub fn lifetime_left(&self, now: u64) -> Duration {
        let left = u64::try_from(self.valid_until).unwrap_or(0).saturating_sub(now);
        Duration::from_secs(left)
    }
}

/// Why a key could not be loaded, a token could not be signed, or a token was refused.
///
/// Messages never include the token; callers should answer clients with one generic "invalid token" whatever the
/// variant, and log the variant.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The PEM is not an Ed25519 key of the expected kind (PKCS#8 private / SPKI public).
    #[error("invalid Ed25519 key")]
    InvalidKey(#[source] jsonwebtoken::errors::Error),
    /// The private key's PEM does not hold an Ed25519 PKCS#8 key its public key can be derived from.
    #[error("invalid Ed25519 private key")]
    UnreadablePrivateKey,
    /// Not a well-formed JWT, or its claims do not have the expected shape.
    #[error("token is malformed")]
    Malformed(#[source] jsonwebtoken::errors::Error),
    /// The header names an algorithm other than EdDSA.
    #[error("token algorithm is not accepted")]
    WrongAlgorithm,
    /// The signature does not match this key (tampered, or signed by another key).
    #[error("token signature is invalid")]
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    #[error("token has expired")]
    Expired,
    /// A required registered claim is absent.
    #[error("token is missing the `{0}` claim")]
    MissingClaim(String),
    /// `iat` is in the future (beyond the leeway): a clock problem or a forged token.
    #[error("token was issued in the future")]
    IssuedInFuture,
    /// `sub` is not a positive decimal user id (or, when signing, the user id is not positive).
    #[error("token subject is not a valid user id")]
    InvalidSubject,
    /// The requested lifetime does not fit in a timestamp.
    #[error("token lifetime is out of range")]
    InvalidLifetime,
    /// The crypto backend failed to sign.
    #[error("could not sign token")]
    Signing(#[source] jsonwebtoken::errors::Error),
    /// The session began longer ago than the longest a session may last: no more tokens for it.
    #[error("the session is too old to be refreshed")]
    SessionTooOld,
}

/// Checks session tokens against the Ed25519 public key. Cheap to share (`Arc`) across connections.
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenVerifier").field("algorithm", &Algorithm::EdDSA).finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// Builds a verifier from an Ed25519 public key in SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_public_pem(pem: &[u8]) -> Result<Self, AuthError> {
        let key = DecodingKey::from_ed_pem(pem).map_err(AuthError::InvalidKey)?;
        Ok(Self::with_key(key))
    }

    fn with_key(key: DecodingKey) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_exp = true;
        validation.leeway = CLOCK_SKEW_LEEWAY_SECS;
        Self { key, validation }
    }

    /// Verifies signature, algorithm, `exp`, `iat` and `sub`, and returns who the token is for.
    pub fn verify(&self, token: &str) -> Result<VerifiedUser, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(map_decode_error)?;
        let claims = data.claims;

        let now = jsonwebtoken::get_current_timestamp();
        // A negative `iat` is long past, hence acceptable; only a future one is refused.
        if let Ok(iat) = u64::try_from(claims.iat)
            && iat > now.saturating_add(CLOCK_SKEW_LEEWAY_SECS)
        {
            return Err(AuthError::IssuedInFuture);
        }

        let user_id = parse_user_id(&claims.sub)?;
        let valid_until = claims.exp.saturating_add(CLOCK_SKEW_LEEWAY_SECS as i64);
        let signed_in_at = claims.auth_time.unwrap_or(claims.iat);
        Ok(VerifiedUser { user_id, username: claims.name, valid_until, signed_in_at })
    }
}

/// Mints session tokens. Only user-service holds one.
pub struct TokenSigner {
    key: EncodingKey,
    /// The Ed25519 public key of `key`, for [`TokenSigner::verifier`].
    public: [u8; 32],
}

impl fmt::Debug for TokenSigner {
    // The key is secret: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSigner").field("algorithm", &Algorithm::EdDSA).finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// Builds a signer from an Ed25519 private key in PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_private_pem(pem: &[u8]) -> Result<Self, AuthError> {
        use ed25519_dalek::pkcs8::DecodePrivateKey as _;
        let key = EncodingKey::from_ed_pem(pem).map_err(AuthError::InvalidKey)?;
        let text = std::str::from_utf8(pem).map_err(|_| AuthError::UnreadablePrivateKey)?;
        let signing = ed25519_dalek::SigningKey::from_pkcs8_pem(text).map_err(|_| AuthError::UnreadablePrivateKey)?;
        Ok(Self { key, public: signing.verifying_key().to_bytes() })
    }

    /// A verifier of this signer's tokens (its public key is derived from the private one), for the user-service
    /// to check a token it is asked to refresh without being given the public key as well.
    pub fn verifier(&self) -> TokenVerifier {
        TokenVerifier::with_key(DecodingKey::from_ed_der(&self.public))
    }

    /// Signs a token for `user_id` valid from `now` (Unix seconds) for `ttl`, beginning a session at `now`.
    ///
    /// `now` is passed in rather than read so callers (and tests) control the clock.
    pub fn sign(&self, user_id: i64, username: &str, ttl: Duration, now: i64) -> Result<String, AuthError> {
        let session = Session { user_id, username, signed_in_at: now, max_age: ttl };
        self.sign_session(&session, ttl, now).map(|signed| signed.token)
    }

    /// Signs a token of `session` valid from `now` for `ttl`, or less: never past the session's end
    /// (`signed_in_at + max_age`). A session already at its end gets [`AuthError::SessionTooOld`].
    pub fn sign_session(&self, session: &Session<'_>, ttl: Duration, now: i64) -> Result<SignedToken, AuthError> {
        if session.user_id <= 0 {
            return Err(AuthError::InvalidSubject);
        }
        let seconds = |d: Duration| i64::try_from(d.as_secs()).map_err(|_| AuthError::InvalidLifetime);
        let exp = now.checked_add(seconds(ttl)?).ok_or(AuthError::InvalidLifetime)?;
        let end = session.signed_in_at.checked_add(seconds(session.max_age)?).ok_or(AuthError::InvalidLifetime)?;
        let exp = exp.min(end);
        if exp <= now {
            return Err(AuthError::SessionTooOld);
        }
        let claims = Claims {
            sub: session.user_id.to_string(),
            iat: now,
            exp,
            name: session.username.to_owned(),
            auth_time: Some(session.signed_in_at),
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &self.key).map_err(AuthError::Signing)?;
        Ok(SignedToken { token, issued_at: now, expires_at: exp })
    }
}

/// Whose tokens [`TokenSigner::sign_session`] signs: one sign-in and how long it may be kept going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session<'a> {
    pub user_id: i64,
    pub username: &'a str,
    /// Unix seconds.
    pub signed_in_at: i64,
    /// The longest the session lasts, refreshes included.
    pub max_age: Duration,
}

/// A signed token and its times (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedToken {
    pub token: String,
    pub issued_at: i64,
    pub expires_at: i64,
}

fn parse_user_id(sub: &str) -> Result<i64, AuthError> {
    // `i64::from_str` accepts a leading `+`; a canonical id is digits only.
    if sub.is_empty() || !sub.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AuthError::InvalidSubject);
    }
    match sub.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(AuthError::InvalidSubject),
    }
}

fn map_decode_error(error: jsonwebtoken::errors::Error) -> AuthError {
    match error.kind() {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::MissingAlgorithm => {
            AuthError::WrongAlgorithm
        }
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim.clone()),
        _ => AuthError::Malformed(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_development_keys_are_recognised_however_their_lines_end() {
        for pem in [DEV_PRIVATE_KEY_PEM, DEV_PUBLIC_KEY_PEM] {
            assert!(is_development_key(pem));
            assert!(is_development_key(&pem.replace('\n', "\r\n")), "CRLF");
            assert!(is_development_key(&format!("  {}\n\n", pem.trim())), "padded");
        }
        assert!(!is_development_key(OTHER_PRIVATE_KEY_PEM));
        assert!(!is_development_key(""));
    }

    /// A second Ed25519 key pair, standing in for an attacker's key.
    const OTHER_PRIVATE_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIPVRKt7z2KhSeu93Dhk+LDkHk8WgW//HVLXp7MHbAg3J
-----END PRIVATE KEY-----
";

    const HOUR: Duration = Duration::from_secs(3600);

    fn now() -> i64 {
        i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap()
    }

    fn signer() -> TokenSigner {
        TokenSigner::from_private_pem(DEV_PRIVATE_KEY_PEM.as_bytes()).unwrap()
    }

    fn verifier() -> TokenVerifier {
        TokenVerifier::from_public_pem(DEV_PUBLIC_KEY_PEM.as_bytes()).unwrap()
    }

    #[test]
    fn a_signers_own_verifier_accepts_its_tokens_and_refuses_another_keys() {
        let token = signer().sign(7, "ann", HOUR, now()).unwrap();
        let other = TokenSigner::from_private_pem(OTHER_PRIVATE_KEY_PEM.as_bytes()).unwrap();

        assert_eq!(signer().verifier().verify(&token).unwrap().user_id, 7);
        assert!(matches!(other.verifier().verify(&token), Err(AuthError::BadSignature)));
        // The same public key the gateway is given.
        assert_eq!(verifier().verify(&token).unwrap(), signer().verifier().verify(&token).unwrap());
    }

    /// Signs arbitrary JSON claims with the dev private key, bypassing `TokenSigner`'s checks.
    fn sign_raw(claims: &serde_json::Value) -> String {
        let key = EncodingKey::from_ed_pem(DEV_PRIVATE_KEY_PEM.as_bytes()).unwrap();
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &key).unwrap()
    }

    #[test]
    fn a_signed_token_verifies_to_its_user() {
        let issued = now();
        let token = signer().sign(42, "alice", HOUR, issued).unwrap();

        let user = verifier().verify(&token).unwrap();

        let valid_until = issued + 3600 + CLOCK_SKEW_LEEWAY_SECS as i64;
        assert_eq!(user, VerifiedUser { user_id: 42, username: "alice".into(), valid_until, signed_in_at: issued });
        assert_eq!(user.lifetime_left(issued as u64), Duration::from_secs(3600 + CLOCK_SKEW_LEEWAY_SECS));
        assert_eq!(user.lifetime_left(valid_until as u64 + 1), Duration::ZERO);
    }

    #[test]
    fn an_expired_token_is_refused() {
        let issued = now() - 2 * 3600;
        let token = signer().sign(42, "alice", HOUR, issued).unwrap();

        assert!(matches!(verifier().verify(&token), Err(AuthError::Expired)));
    }

    #[test]
    fn a_tampered_payload_is_refused() {
        let token = signer().sign(42, "alice", HOUR, now()).unwrap();
        let forged = signer().sign(1, "admin", HOUR, now()).unwrap();
        // Graft the forged payload onto the original header and signature.
        let parts: Vec<&str> = token.split('.').collect();
        let forged_payload = forged.split('.').nth(1).unwrap();
        let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);

        assert!(matches!(verifier().verify(&tampered), Err(AuthError::BadSignature)));
    }

    #[test]
    fn a_tampered_signature_is_refused() {
        let token = signer().sign(42, "alice", HOUR, now()).unwrap();
        let (head, signature) = token.rsplit_once('.').unwrap();
        let mut sig: Vec<u8> = signature.bytes().collect();
        sig[0] = if sig[0] == b'A' { b'B' } else { b'A' };
        let tampered = format!("{head}.{}", String::from_utf8(sig).unwrap());

        assert!(matches!(verifier().verify(&tampered), Err(AuthError::BadSignature)));
    }

    #[test]
    fn an_hs256_token_is_refused_even_when_keyed_with_the_public_key() {
        let claims = Claims { sub: "42".into(), iat: now(), exp: now() + 3600, name: "alice".into(), auth_time: None };
        for secret in [b"some secret".as_slice(), DEV_PUBLIC_KEY_PEM.as_bytes()] {
            let token =
                jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret))
                    .unwrap();

            assert!(matches!(verifier().verify(&token), Err(AuthError::WrongAlgorithm)));
        }
    }

    #[test]
    fn an_unsigned_alg_none_token_is_refused() {
        // {"alg":"none","typ":"JWT"} . {"sub":"42","iat":0,"exp":9999999999,"name":"alice"} . (empty)
        let token = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.\
                     eyJzdWIiOiI0MiIsImlhdCI6MCwiZXhwIjo5OTk5OTk5OTk5LCJuYW1lIjoiYWxpY2UifQ.";

        assert!(verifier().verify(token).is_err());
    }

    #[test]
    fn a_token_signed_by_another_key_is_refused() {
        let other = TokenSigner::from_private_pem(OTHER_PRIVATE_KEY_PEM.as_bytes()).unwrap();
        let token = other.sign(42, "alice", HOUR, now()).unwrap();

        assert!(matches!(verifier().verify(&token), Err(AuthError::BadSignature)));
    }

    #[test]
    fn a_token_without_sub_is_refused() {
        let token = sign_raw(&serde_json::json!({ "iat": now(), "exp": now() + 3600, "name": "alice" }));

        assert!(matches!(verifier().verify(&token), Err(AuthError::MissingClaim(_) | AuthError::Malformed(_))));
    }

    #[test]
    fn a_token_without_exp_is_refused() {
        let token = sign_raw(&serde_json::json!({ "sub": "42", "iat": now(), "name": "alice" }));

        assert!(matches!(verifier().verify(&token), Err(AuthError::MissingClaim(_) | AuthError::Malformed(_))));
    }

    #[test]
    fn a_token_issued_in_the_future_is_refused() {
        let token = signer().sign(42, "alice", HOUR, now() + 600).unwrap();

        assert!(matches!(verifier().verify(&token), Err(AuthError::IssuedInFuture)));
    }

    #[test]
    fn a_token_issued_within_the_clock_skew_leeway_is_accepted() {
        let token = signer().sign(42, "alice", HOUR, now() + 30).unwrap();

        assert!(verifier().verify(&token).is_ok());
    }

    #[test]
    fn a_subject_that_is_not_a_positive_id_is_refused() {
        for sub in ["0", "-1", "+42", "abc", "", "99999999999999999999"] {
            let token = sign_raw(&serde_json::json!({ "sub": sub, "iat": now(), "exp": now() + 3600, "name": "a" }));

            assert!(matches!(verifier().verify(&token), Err(AuthError::InvalidSubject)), "sub {sub:?}");
        }
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        for token in ["", ".", "..", "a.b.c", "not a token", "eyJ.eyJ.sig"] {
            assert!(verifier().verify(token).is_err(), "token {token:?}");
        }
    }

    #[test]
    fn a_refreshed_token_keeps_its_sessions_sign_in_and_never_outlives_the_session() {
        let now = now();
        let signed_in_at = now - 3 * 3600;
        let session = Session { user_id: 42, username: "alice", signed_in_at, max_age: 4 * HOUR };

        // Three hours in, an hour-long token fits in the session's four.
        let refreshed = signer().sign_session(&session, HOUR, now).unwrap();
        assert_eq!((refreshed.issued_at, refreshed.expires_at), (now, now + 3600));
        let user = verifier().verify(&refreshed.token).unwrap();
        assert_eq!(user.signed_in_at, signed_in_at, "the refresh began a new session");

        // A day-long one is cut at the session's end.
        let capped = signer().sign_session(&session, 24 * HOUR, now).unwrap();
        assert_eq!(capped.expires_at, signed_in_at + 4 * 3600);
        assert_eq!(
            verifier().verify(&capped.token).unwrap().valid_until,
            capped.expires_at + CLOCK_SKEW_LEEWAY_SECS as i64
        );

        // At its end, none.
        let over = Session { signed_in_at: now - 4 * 3600, ..session };
        assert!(matches!(signer().sign_session(&over, HOUR, now), Err(AuthError::SessionTooOld)));
    }

    #[test]
    fn a_token_from_before_refreshing_existed_counts_its_issue_as_the_sign_in() {
        let issued = now() - 60;
        let token = sign_raw(&serde_json::json!({ "sub": "42", "iat": issued, "exp": now() + 3600, "name": "alice" }));

        assert_eq!(verifier().verify(&token).unwrap().signed_in_at, issued);
    }

    #[test]
    fn signing_refuses_a_non_positive_user_id() {
        assert!(matches!(signer().sign(0, "alice", HOUR, now()), Err(AuthError::InvalidSubject)));
    }

    #[test]
    fn keys_of_the_wrong_kind_are_refused() {
        assert!(matches!(TokenVerifier::from_public_pem(b"not a pem"), Err(AuthError::InvalidKey(_))));
        assert!(matches!(TokenSigner::from_private_pem(DEV_PUBLIC_KEY_PEM.as_bytes()), Err(AuthError::InvalidKey(_))));
    }

    #[test]
    fn debug_output_never_shows_key_material() {
        let printed = format!("{:?} {:?}", signer(), verifier());

        assert!(!printed.contains("MC4C") && !printed.contains("MCow"), "{printed}");
    }
}
