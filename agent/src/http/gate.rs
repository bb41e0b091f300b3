//! What every request passes before the routes: GET or HEAD only, no body, and basic auth
//! when users are configured (except `/healthz`, which liveness probes call bare).
use std::{net::IpAddr, sync::Arc};

use axum::{
    body::Body,
    http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode},
    Router,
};
use hyper::body::{Body as _, Incoming};
use tower::ServiceExt;

use super::{
    auth::{BasicAuth, Verdict},
    slots::Occupant,
};

pub struct Gate {
    router: Router,
    auth: Option<BasicAuth>,
    /// The web config's `http_server_config.headers`, on every response.
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Gate {
    pub fn new(
        router: Router,
        auth: Option<BasicAuth>,
        headers: Vec<(HeaderName, HeaderValue)>,
    ) -> Gate {
        Gate {
            router,
            auth,
            headers,
        }
    }

    /// Answers a request from `peer` on `occupant`'s connection, which counts as serving
    /// (safe from eviction) only once the request is let through: a client that merely
    /// offers passwords must not be able to hold slots.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        peer: IpAddr,
        occupant: &Arc<Occupant>,
    ) -> Response<Body> {
        let mut response = self.respond(request, peer, occupant).await;
        for (name, value) in &self.headers {
            response.headers_mut().insert(name.clone(), value.clone());
        }
        response
    }

    async fn respond(
        &self,
        request: Request<Incoming>,
        peer: IpAddr,
        occupant: &Arc<Occupant>,
    ) -> Response<Body> {
        if !matches!(*request.method(), Method::GET | Method::HEAD) {
            let mut response = refusal(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        if !request.body().is_end_stream() {
            return refusal(StatusCode::PAYLOAD_TOO_LARGE, "requests carry no body\n");
        }
        if let Some(auth) = self
            .auth
            .as_ref()
            .filter(|_| request.uri().path() != "/healthz")
        {
            let authorization = request.headers().get(header::AUTHORIZATION);
            match auth.check(authorization, peer).await {
                Verdict::Allowed => {}
                Verdict::Refused => {
                    let mut response = refusal(StatusCode::UNAUTHORIZED, "unauthorized\n");
                    response.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Basic realm=\"exitwatch\""),
                    );
                    return response;
                }
                Verdict::TryLater(wait) => {
                    let mut response = refusal(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too many password checks, try again later\n",
                    );
                    // Whole seconds, rounded up: a client that retries sooner is refused again.
                    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
                    return response;
                }
            }
        }
        let _serving = occupant.busy();
        match self.router.clone().oneshot(request.map(Body::new)).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// A short plain-text refusal; the connection closes after it, so nothing unread is kept.
fn refusal(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
