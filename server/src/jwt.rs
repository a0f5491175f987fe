//! Bearer JWT authentication: the binary's built-in [`Authenticator`].

use async_trait::async_trait;
use axum::http::{header::AUTHORIZATION, request::Parts};
use jsonwebtoken::{decode, errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::auth::{AuthRejection, Authenticator, Principal};

/// The key that verifies tokens.
#[derive(Clone, Debug)]
pub enum JwtKey {
    /// A shared HS256 secret.
    Hs256(Vec<u8>),
    /// An RS256 public key, PEM.
    Rs256Pem(Vec<u8>),
    /// An ES256 (P-256) public key, PEM.
    Es256Pem(Vec<u8>),
}

/// A key that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid JWT key: {0}")]
pub struct JwtKeyError(String);

/// Verifies `Authorization: Bearer <JWT>`: the signature, `exp` (required) and `nbf`, and
/// `iss`/`aud` when configured. The principal's user is the `sub` claim, its tenant the
/// tenant claim (required: a token without one is refused, so that no caller escapes
/// tenant isolation by omission), its session the `sid` claim; all claims are kept in
/// [`Principal::claims`] for authorization filters.
#[derive(Clone)]
pub struct JwtAuthenticator {
    key: DecodingKey,
    validation: Validation,
    tenant_claim: String,
}

impl std::fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthenticator")
            .field("algorithms", &self.validation.algorithms)
            .field("tenant_claim", &self.tenant_claim)
            .finish_non_exhaustive()
    }
}

impl JwtAuthenticator {
    /// Verifies with `key`; the tenant is read from the `tenant_id` claim.
    pub fn new(key: JwtKey) -> Result<Self, JwtKeyError> {
        let invalid = |error: jsonwebtoken::errors::Error| JwtKeyError(error.to_string());
        let (key, algorithm) = match key {
            JwtKey::Hs256(secret) if secret.len() < 32 => {
                return Err(JwtKeyError(
                    "an HS256 secret must be at least 32 bytes long".into(),
                ))
            }
            JwtKey::Hs256(secret) => (DecodingKey::from_secret(&secret), Algorithm::HS256),
            JwtKey::Rs256Pem(pem) => (
                DecodingKey::from_rsa_pem(&pem).map_err(invalid)?,
                Algorithm::RS256,
            ),
            JwtKey::Es256Pem(pem) => (
                DecodingKey::from_ec_pem(&pem).map_err(invalid)?,
                Algorithm::ES256,
            ),
        };
        let mut validation = Validation::new(algorithm);
        validation.validate_nbf = true;
        // A token that names an audience is refused until `audience` names it too: a
        // token an identity provider issued for another service must not work here.
        Ok(Self {
            key,
            validation,
            tenant_claim: "tenant_id".to_owned(),
        })
    }

    /// Accept only tokens with this `iss`; a token without one is refused.
    #[must_use]
    pub fn issuer(mut self, issuer: &str) -> Self {
        self.validation.set_issuer(&[issuer]);
        self.validation.required_spec_claims.insert("iss".into());
        self
    }

    /// Accept only tokens with this `aud`; a token without one is refused.
    #[must_use]
    pub fn audience(mut self, audience: &str) -> Self {
        self.validation.set_audience(&[audience]);
        self.validation.required_spec_claims.insert("aud".into());
        self
    }

    /// The claim that names the tenant (default `tenant_id`).
    #[must_use]
    pub fn tenant_claim(mut self, claim: impl Into<String>) -> Self {
        self.tenant_claim = claim.into();
        self
    }

    fn verify(&self, token: &str) -> Result<Principal, AuthRejection> {
        let claims = decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|error| {
                let reason = match error.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired".to_owned(),
                    ErrorKind::ImmatureSignature => "the token is not valid yet".to_owned(),
                    ErrorKind::InvalidSignature => "the token's signature is invalid".to_owned(),
                    ErrorKind::InvalidIssuer => "the token's issuer is not accepted".to_owned(),
                    ErrorKind::InvalidAudience => {
                        "the token's audience is not accepted (a token with an `aud` claim needs the server's --jwt-audience to name it)".to_owned()
                    }
                    ErrorKind::InvalidAlgorithm => {
                        "the token's algorithm is not accepted".to_owned()
                    }
                    ErrorKind::MissingRequiredClaim(claim) => {
                        format!("the token has no `{claim}` claim")
                    }
                    _ => "the token is malformed".to_owned(),
                };
                invalid_token(reason)
            })?
            .claims;
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
        let tenant_id = text(&self.tenant_claim).ok_or_else(|| {
            invalid_token(format!(
                "the token has no string `{}` claim",
                self.tenant_claim
            ))
        })?;
        // Else every token with a blank tenant would share one tenant.
        if tenant_id.trim().is_empty() {
            return Err(invalid_token(format!(
                "the token's `{}` claim is blank; it must name a tenant",
                self.tenant_claim
            )));
        }
        Ok(Principal {
            user_id: text("sub"),
            tenant_id: Some(tenant_id),
            session_id: text("sid"),
            // Validation required a numeric `exp`.
            expires_at: claims
                .get("exp")
                .and_then(Value::as_f64)
                .and_then(|exp| chrono::DateTime::from_timestamp(exp as i64, 0)),
            claims: claims.into_iter().collect(),
        })
    }
}

fn invalid_token(reason: String) -> AuthRejection {
    AuthRejection {
        challenge: format!(
            "Bearer realm=\"distributed-events\", error=\"invalid_token\", error_description=\"{}\"",
            reason.replace('"', "'")
        ),
        message: format!("{reason}; get a new token and retry"),
    }
}

#[async_trait]
impl Authenticator for JwtAuthenticator {
    async fn authenticate(&self, request: &Parts) -> Result<Principal, AuthRejection> {
        let header = request
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| AuthRejection::bearer("send `Authorization: Bearer <token>`"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or_else(|| {
                AuthRejection::bearer("the Authorization header must be `Bearer <token>`")
            })?;
        self.verify(token)
    }
}
