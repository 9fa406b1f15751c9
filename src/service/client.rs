//! The client side: signs each request with the caller's PSE key and sends
//! it to the service (`tresor submit`, `jobs`, `approve`, `release`, …).

use super::auth;
use crate::pse::Pse;
use std::io::Read;
use std::time::Duration;

/// Why a call failed before the service answered.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Not reachable.
    #[error("cannot reach the service at {0}: {1} — is `tresor serve` running there? (--service URL or TRESOR_SERVICE)")]
    Unreachable(String, String),
    /// Answered with something that is not the service's JSON.
    #[error("the service at {0} answered something unexpected: {1}")]
    Garbled(String, String),
    /// Signing failed.
    #[error(transparent)]
    Crypto(#[from] crate::crypto::CryptoError),
}

/// A connection to one service as one user.
pub struct Client {
    base: String,
    agent: ureq::Agent,
    pse: Pse,
    store_id: String,
}

/// A reply: status and body.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON (null if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }

    /// The service's error sentence, or the status.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("HTTP {}", self.status))
    }
}

fn send(
    agent: &ureq::Agent,
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<Answer, ClientError> {
    let mut r = agent.request(method, &format!("{base}{path}"));
    for (k, v) in headers {
        r = r.set(k, v);
    }
    let resp = match r.send_bytes(body) {
        Ok(x) => x,
        Err(ureq::Error::Status(_, x)) => x,
        Err(e) => return Err(ClientError::Unreachable(base.into(), e.to_string())),
    };
    let status = resp.status();
    let mut bytes = Vec::new();
    resp.into_reader()
        .take(1 << 30)
        .read_to_end(&mut bytes)
        .map_err(|e| ClientError::Garbled(base.into(), e.to_string()))?;
    Ok(Answer {
        status,
        body: bytes,
    })
}

impl Client {
    /// Asks the service at `base` which store it serves.
    pub fn connect(base: &str, pse: Pse) -> Result<Client, ClientError> {
        let base = base.trim_end_matches('/').to_string();
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .build();
        let info = send(&agent, &base, "GET", "/info", &[], b"")?;
        let store_id = info.json()["store_id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| ClientError::Garbled(base.clone(), "no store_id in /info".into()))?;
        Ok(Client {
            base,
            agent,
            pse,
            store_id,
        })
    }

    /// A signed request.
    pub fn call(&self, method: &str, path: &str, body: &[u8]) -> Result<Answer, ClientError> {
        let mut headers = auth::headers(
            &self.pse.sign,
            &self.pse.public.user,
            &self.store_id,
            (method, path, body),
            auth::now(),
        )?;
        headers.push(("content-type", "application/json".to_string()));
        send(&self.agent, &self.base, method, path, &headers, body)
    }
}
