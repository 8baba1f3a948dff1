//! The operator's HTTP endpoints: /metrics (Prometheus text), /healthz (alive), /readyz
//! (state restored, partitions assigned, MongoDB reachable, lag under the threshold; 503
//! otherwise), and the query API under /v1 (described by /v1/openapi.json).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query as QueryParams, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use crate::domain::trends::Granularity;
use crate::health::Health;
use crate::query::{Query, QueryClient};
use crate::reconcile::{Reconciler, RunError, RunRequest, Trigger};
use crate::telemetry::Metrics;

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Arc<Health>,
    queries: QueryClient,
    reconciler: Option<Arc<Reconciler>>,
}

/// Largest request body taken (no endpoint reads one today; POST /v1/reconcile takes its
/// parameters in the query string).
const MAX_BODY_BYTES: usize = 16 * 1024;

pub fn router(
    metrics: Metrics,
    health: Arc<Health>,
    queries: QueryClient,
    (reconciler, api_token): (Option<Arc<Reconciler>>, Option<Arc<str>>),
) -> Router {
    let api = Router::new()
        .route("/v1/customers/{id}", get(customer))
        .route("/v1/segments", get(segments))
        .route("/v1/products/top", get(top_products))
        .route("/v1/trends/{granularity}", get(trends))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/reconcile", post(reconcile))
        .route_layer(axum::middleware::from_fn_with_state(api_token, require_token));
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(api)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(AppState { metrics, health, queries, reconciler })
}

/// With a token configured, a request passes only with `Authorization: Bearer <token>`
/// (compared in constant time); 401 otherwise.
async fn require_token(
    State(token): State<Option<Arc<str>>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use subtle::ConstantTimeEq;
    let Some(token) = token else { return next.run(request).await };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        return next.run(request).await;
    }
    let mut response = problem(StatusCode::UNAUTHORIZED, "missing or wrong bearer token (service.api_token)".into());
    response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    response
}

const OPENAPI: &str = include_str!("../docs/openapi.json");

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

fn problem(code: StatusCode, message: String) -> axum::response::Response {
    (code, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn ask(s: &AppState, q: Query, missing: impl FnOnce() -> String) -> axum::response::Response {
    match s.queries.ask(q).await {
        Ok(Some(answer)) => Json(answer).into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, missing()),
        Err(()) => problem(StatusCode::SERVICE_UNAVAILABLE, "the service is stopping".into()),
    }
}

async fn customer(State(s): State<AppState>, Path(id): Path<String>) -> axum::response::Response {
    if id.is_empty() || id.chars().count() > 128 {
        return problem(StatusCode::BAD_REQUEST, "a customer id is 1 to 128 characters".into());
    }
    let missing = || format!("customer {id:?} is not in customer_rfm_analysis (no purchase seen, or not flushed yet)");
    ask(&s, Query::Customer(id.clone()), missing).await
}

async fn segments(State(s): State<AppState>) -> axum::response::Response {
    ask(&s, Query::Segments, String::new).await
}

#[derive(serde::Deserialize)]
struct TopParams {
    category: Option<String>,
    n: Option<String>,
}

async fn top_products(State(s): State<AppState>, QueryParams(p): QueryParams<TopParams>) -> axum::response::Response {
    let n = match p.n.as_deref().map(str::parse::<usize>) {
        None => 10,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => return problem(StatusCode::BAD_REQUEST, "n must be an integer from 1 to 1000".into()),
    };
    let category = p.category.filter(|c| !c.is_empty());
    let missing = {
        let c = category.clone();
        move || format!("no product of category {:?} in product_performance", c.unwrap_or_default())
    };
    ask(&s, Query::TopProducts { category, n }, missing).await
}

async fn trends(State(s): State<AppState>, Path(g): Path<String>) -> axum::response::Response {
    let g = match g.as_str() {
        "daily" => Granularity::Daily,
        "weekly" => Granularity::Weekly,
        "monthly" => Granularity::Monthly,
        other => {
            return problem(StatusCode::BAD_REQUEST, format!("{other:?} is not one of daily, weekly, monthly"));
        }
    };
    ask(&s, Query::Trends(g), String::new).await
}

#[derive(serde::Deserialize)]
struct ReconcileParams {
    cutoff: Option<String>,
    repair: Option<bool>,
}

/// Runs a reconciliation now and answers its report (also written to
/// `reconciliation_reports`); 409 while one is running.
async fn reconcile(
    State(s): State<AppState>,
    QueryParams(p): QueryParams<ReconcileParams>,
) -> axum::response::Response {
    let Some(reconciler) = s.reconciler.clone() else {
        return problem(StatusCode::NOT_FOUND, "reconciliation runs in `martstream run`, not in this command".into());
    };
    let cutoff = match p.cutoff.as_deref().map(|c| chrono::NaiveDate::parse_from_str(c, "%Y-%m-%d")) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(_)) => return problem(StatusCode::BAD_REQUEST, "cutoff must be a date, YYYY-MM-DD".into()),
    };
    let req = RunRequest { cutoff, repair: p.repair.unwrap_or(false), trigger: Trigger::Manual };
    // Its own task: a client that goes away does not cancel a run half-way through a repair.
    match tokio::spawn(async move { reconciler.run(req).await }).await {
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(e @ RunError::Busy)) => problem(StatusCode::CONFLICT, e.to_string()),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, format!("the run stopped: {e}")),
    }
}

async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    s.metrics.ready.set(i64::from(s.health.readiness().ready));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render())
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let r = s.health.readiness();
    let code = if r.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(r))
}

/// Binds now (so a taken port fails at start) and serves until `shutdown`.
pub async fn serve(
    listen: &str,
    (metrics, health): (Metrics, Arc<Health>),
    (queries, reconciler): (QueryClient, Option<Arc<Reconciler>>),
    api_token: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let token = (!api_token.is_empty()).then(|| Arc::from(api_token));
    let app = router(metrics, health, queries, (reconciler, token));
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
    });
    Ok((addr, handle))
}
