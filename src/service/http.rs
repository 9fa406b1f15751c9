//! HTTP transport of the service (axum on tokio): one handler hands every
//! request to [`Service::handle`] on a blocking thread (signature checks,
//! SQLite and fsyncs block) and sends its reply back.
//!
//! Plain HTTP, meant for loopback: requests are signed, so they cannot be
//! forged or replayed on the way, but results are patient data — anything
//! beyond this host goes through a TLS reverse proxy (docs/SERVICE.md).

use super::server::{Reply, Req, Service};
use axum::body::to_bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

struct App {
    service: Arc<Service>,
    max_body: usize,
    max_program: usize,
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn respond(r: Reply) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let ct = if r.json {
        "application/json"
    } else {
        "application/octet-stream"
    };
    (status, [("content-type", ct)], r.body).into_response()
}

async fn handle(State(app): State<Arc<App>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    // Program uploads are raw bytes; everything else is small JSON.
    let upload =
        parts.method == axum::http::Method::PUT && parts.uri.path().starts_with("/programs/");
    let (limit, flag) = if upload {
        (app.max_program, "--max-program")
    } else {
        (app.max_body, "--max-body")
    };
    let body = match to_bytes(body, limit).await {
        Ok(b) => b.to_vec(),
        Err(_) => {
            return respond(Reply::error(
                413,
                format!("request body larger than {limit} bytes (the service's {flag})"),
            ))
        }
    };
    let h = &parts.headers;
    let req = Req {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into()),
        headers: super::auth::Headers {
            user: header(h, super::auth::USER),
            time: header(h, super::auth::TIME),
            nonce: header(h, super::auth::NONCE),
            signature: header(h, super::auth::SIGNATURE),
        },
        body,
    };
    let service = Arc::clone(&app.service);
    match tokio::task::spawn_blocking(move || service.handle(&req)).await {
        Ok(r) => respond(r),
        Err(_) => respond(Reply::error(
            500,
            "the request's handler failed; see the service's log",
        )),
    }
}

/// Serves `service` on `listener` until `stop` resolves.
pub async fn serve(
    service: Arc<Service>,
    listener: tokio::net::TcpListener,
    (max_body, max_program): (usize, usize),
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Arc::new(App {
        service,
        max_body,
        max_program,
    });
    let router = axum::Router::new()
        .fallback(handle)
        .with_state(app)
        // The limit is ours (to_bytes above), with our message.
        .layer(axum::extract::DefaultBodyLimit::disable());
    axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
}
