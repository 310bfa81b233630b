//! Our own image links: `/v1/images/{job}/{index}.{ext}?expires=<unix s>&signature=<hex>`,
//! with the signature an HMAC-SHA256 over path and expiry under a secret kept in the
//! database, so links handed out before a restart keep working until they expire.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

#[derive(Clone)]
pub struct LinkSigner {
    secret: Vec<u8>,
    public_url: String,
}

impl std::fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LinkSigner({})", self.public_url)
    }
}

impl LinkSigner {
    pub fn new(secret: Vec<u8>, public_url: &str) -> Self {
        Self {
            secret,
            public_url: public_url.trim_end_matches('/').to_string(),
        }
    }

    pub fn path(job_id: &str, index: u32, extension: &str) -> String {
        format!("/v1/images/{job_id}/{index}.{extension}")
    }

    fn signature(&self, path: &str, expires: i64) -> Vec<u8> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(path.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// The full link to `path`, valid until `expires` (unix seconds).
    pub fn url(&self, path: &str, expires: i64) -> String {
        let signature = hex(&self.signature(path, expires));
        format!(
            "{}{path}?expires={expires}&signature={signature}",
            self.public_url
        )
    }

    /// Whether the link is authentic and not expired at `now` (unix seconds).
    pub fn verify(&self, path: &str, expires: i64, signature: &str, now: i64) -> bool {
        let expected = hex(&self.signature(path, expires));
        let authentic = bool::from(expected.as_bytes().ct_eq(signature.as_bytes()));
        authentic && now < expires
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_verify_until_they_expire_and_not_when_tampered() {
        let signer = LinkSigner::new(b"secret".to_vec(), "http://127.0.0.1:8080/");
        let path = LinkSigner::path("job_1", 0, "jpeg");
        let url = signer.url(&path, 1000);
        assert!(
            url.starts_with("http://127.0.0.1:8080/v1/images/job_1/0.jpeg?expires=1000&signature=")
        );
        let signature = url.rsplit('=').next().unwrap();
        assert!(signer.verify(&path, 1000, signature, 999));
        assert!(!signer.verify(&path, 1000, signature, 1000), "expired");
        assert!(
            !signer.verify(&path, 2000, signature, 999),
            "expiry changed"
        );
        assert!(
            !signer.verify("/v1/images/job_1/1.jpeg", 1000, signature, 999),
            "path changed"
        );
        let other = LinkSigner::new(b"other".to_vec(), "http://x");
        assert!(!other.verify(&path, 1000, signature, 999), "other secret");
    }
}
