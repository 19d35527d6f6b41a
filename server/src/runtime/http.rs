//! The HTTP API and the live map, served on `--http` (the master's is the one with a view).
//!
//! - `GET /` (and `/dashboard/app.js`, `/dashboard/style.css`): the live map of the world, static
//!   files compiled into the binary; the page polls `/api/cluster`.
//! - `GET /api/cluster`: the master's view as JSON (no player names in it).
//! - `GET /api/players/{name}`: which shard the directory says a player is on, and that shard's
//!   client address; 404 if no such player is logged in. It tells anyone who can ask where a
//!   named player is, so it needs the operator's API token (`Authorization: Bearer TOKEN`,
//!   derived from the cluster secret; `zonescaler up` writes it to its run directory): 401
//!   without it.
//!
//! - `GET /api/audit`: the master's latest ownership audit (`cluster::audit`): per shard the
//!   entities it owns and holds frozen in handoffs, the totals, and the entities owned by two
//!   shards at once (none, unless something is wrong), with the counts since the master
//!   started. It names entities, so it needs the operator's API token as above.
//!
//! - `POST /api/shards/{id}/drain`: start draining shard `id` (the operator's API token, as
//!   above): the balancer moves every cell of it to the others, and once it owns nothing it
//!   leaves the cluster and exits 0. 202 when the drain started (or already runs); 404 for no
//!   such shard; 409 when it cannot be drained (the master's shard, a dead one, the last one
//!   that could take cells). `zonescaler drain --shard N` calls it and follows the drain.
//!
//! The API routes answer `307 Temporary Redirect` to the master's API on a shard that does not
//! hold the master role (the master moves when it dies: `cluster::election`), with the master's
//! id and API address in a JSON body too; 503 before the cluster formed, or when the master
//! serves no API.
//!
//! Test only, on any shard: `POST /api/debug/partition?ms=N` (the operator's API token) cuts
//! this shard's links off the network for `N` ms (at most [`PARTITION_MS_MAX`]), both ways,
//! without closing them (`zonescaler_net::fault`); `ms=0` heals at once. 202 with the cut; 404
//! unless the shard was started with `ZONESCALER_TEST_FAULTS=1`.

use crate::cluster::{ClusterView, DrainRefused};
use axum::extract::{Path, RawQuery};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::oneshot;
use tracing::{error, warn};
use zonescaler_net::fault::PartitionSwitch;

/// The view the API serves, replaced by the tick thread whenever the master's changes.
pub type SharedView = Arc<Mutex<Option<ClusterView>>>;

/// Orders for the master that the API queues and the tick thread carries out (it owns the
/// master), each answered on its channel.
pub type ApiCommands = Arc<Mutex<VecDeque<ApiCommand>>>;

/// Orders waiting for the tick thread at most; more are answered 503.
pub const API_COMMANDS_MAX: usize = 64;

/// How long the API waits for the tick thread to answer an order.
const API_ANSWER_WAIT: Duration = Duration::from_secs(5);

/// One order for the master.
#[derive(Debug)]
pub enum ApiCommand {
    /// Drain shard `shard`; `Ok` once draining (also if it already was).
    Drain {
        shard: u16,
        reply: oneshot::Sender<Result<(), DrainRefused>>,
    },
}

/// The longest cut `POST /api/debug/partition` makes.
pub const PARTITION_MS_MAX: u64 = 600_000;

/// Serve the API and the dashboard until the runtime stops; `partition`: the test-only fault
/// switch of this shard's links, when enabled.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    view: SharedView,
    commands: ApiCommands,
    api_token: String,
    partition: Option<PartitionSwitch>,
) {
    let debug = debug_router(partition, Arc::new(api_token.clone()));
    let app = router(view, commands, api_token).merge(debug);
    if let Err(e) = axum::serve(listener, app).await {
        error!(error = %e, "HTTP API stopped");
    }
}

fn error_json(status: StatusCode, text: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": text }))).into_response()
}

/// What a shard without the master role answers: who holds it, in which term, and its API
/// (`zonescaler up` reads `api` from it).
pub(crate) fn pointer_body(v: &ClusterView, api: &str) -> serde_json::Value {
    serde_json::json!({
        "error": format!(
            "shard {} holds the master role (term {}); its API is at {}",
            v.master,
            v.term,
            if api.is_empty() { "no address (it serves no API)" } else { api }
        ),
        "master": v.master,
        "term": v.term,
        "api": api,
    })
}

/// Why this shard cannot answer `path` itself: no view yet (503), or another holds the master
/// role (307 to its API, or 503 when it serves none). `None`: this shard is the master.
fn not_here(v: Option<&ClusterView>, path: &str) -> Option<Response> {
    let Some(v) = v else {
        return Some(no_master());
    };
    let api = v.master_api.as_deref()?;
    let body = pointer_body(v, api);
    if api.is_empty() {
        return Some((StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response());
    }
    let location = format!("http://{api}{path}");
    Some(
        (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, location)],
            axum::Json(body),
        )
            .into_response(),
    )
}

/// `POST /api/shards/{id}/drain`, once authorised: queue the order and wait for its answer.
async fn drain(commands: ApiCommands, shard: u16, elsewhere: Option<Response>) -> Response {
    if let Some(r) = elsewhere {
        return r;
    }
    let (reply, answer) = oneshot::channel();
    {
        let mut q = commands.lock().unwrap_or_else(PoisonError::into_inner);
        if q.len() >= API_COMMANDS_MAX {
            return error_json(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many orders waiting for the master; try again".into(),
            );
        }
        q.push_back(ApiCommand::Drain { shard, reply });
    }
    match tokio::time::timeout(API_ANSWER_WAIT, answer).await {
        Ok(Ok(Ok(()))) => (
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({
                "draining": shard,
                "message": format!(
                    "shard {shard} is draining: its cells move to the other shards, then it exits"
                ),
            })),
        )
            .into_response(),
        Ok(Ok(Err(e))) => {
            let status = match e {
                DrainRefused::NoSuchShard(_) => StatusCode::NOT_FOUND,
                DrainRefused::NotPlaced => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::CONFLICT,
            };
            error_json(status, e.to_string())
        }
        Ok(Err(_)) | Err(_) => error_json(
            StatusCode::SERVICE_UNAVAILABLE,
            "the master did not answer in time (is its tick stalled?)".into(),
        ),
    }
}

fn no_master() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(serde_json::json!({
            "error": "this shard does not hold the master role (or the cluster has not formed yet); ask shard 0"
        })),
    )
        .into_response()
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        axum::Json(serde_json::json!({
            "error": "player lookups, the audit and orders need the operator's API token: Authorization: Bearer TOKEN (zonescaler up writes it to api.token in its run directory)"
        })),
    )
        .into_response()
}

/// Whether `headers` carry `Authorization: Bearer <token>`, compared in constant time.
fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    // Compared through an HMAC of both sides (`ring::hmac::verify` is constant-time), so the
    // time taken says nothing about how much of the token a guess got right.
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"zonescaler api token check");
    let tag = ring::hmac::sign(&key, token.as_bytes());
    !token.is_empty() && ring::hmac::verify(&key, given.trim().as_bytes(), tag.as_ref()).is_ok()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `POST /api/shards/{id}/drain`.
fn drain_router(view: SharedView, commands: ApiCommands, drain_token: Arc<String>) -> axum::Router {
    let current = move || view.lock().unwrap_or_else(PoisonError::into_inner).clone();
    axum::Router::new().route(
        "/api/shards/{id}/drain",
        axum::routing::post(move |Path(id): Path<String>, headers: HeaderMap| {
            let allowed = authorized(&headers, &drain_token);
            let elsewhere = not_here(current().as_ref(), &format!("/api/shards/{id}/drain"));
            let commands = commands.clone();
            async move {
                if !allowed {
                    return unauthorized();
                }
                match id.parse::<u16>() {
                    Ok(shard) => drain(commands, shard, elsewhere).await,
                    Err(_) => error_json(
                        StatusCode::BAD_REQUEST,
                        format!("{id:?} is no shard id (a number, 0..=65535)"),
                    ),
                }
            }
        }),
    )
}

/// `POST /api/debug/partition?ms=N`: test only (see the module docs).
fn debug_router(switch: Option<PartitionSwitch>, token: Arc<String>) -> axum::Router {
    axum::Router::new().route(
        "/api/debug/partition",
        axum::routing::post(move |RawQuery(query): RawQuery, headers: HeaderMap| {
            let allowed = authorized(&headers, &token);
            let switch = switch.clone();
            async move {
                let Some(switch) = switch else {
                    return error_json(
                        StatusCode::NOT_FOUND,
                        "test faults are not enabled on this shard (ZONESCALER_TEST_FAULTS=1)"
                            .into(),
                    );
                };
                if !allowed {
                    return unauthorized();
                }
                let ms = (query.as_deref().unwrap_or_default().split('&'))
                    .find_map(|kv| kv.strip_prefix("ms="))
                    .and_then(|v| v.parse::<u64>().ok())
                    .filter(|ms| *ms <= PARTITION_MS_MAX);
                let Some(ms) = ms else {
                    return error_json(
                        StatusCode::BAD_REQUEST,
                        format!("give ?ms=N, 0..={PARTITION_MS_MAX}"),
                    );
                };
                switch.cut_for(Duration::from_millis(ms));
                warn!(ms, "test fault: this shard's links are cut off the network");
                let body = serde_json::json!({ "partitioned_ms": ms });
                (StatusCode::ACCEPTED, axum::Json(body)).into_response()
            }
        }),
    )
}

/// The routes.
pub fn router(view: SharedView, commands: ApiCommands, api_token: String) -> axum::Router {
    let token = Arc::new(api_token);
    let drain_route = drain_router(view.clone(), commands, token.clone());
    let audit_route = audit_router(view.clone(), token.clone());
    let current = move || view.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let cluster = current.clone();
    axum::Router::new()
        .route(
            "/",
            axum::routing::get(|| async {
                asset(
                    "text/html; charset=utf-8",
                    crate::runtime::dashboard::INDEX_HTML,
                )
            }),
        )
        .route(
            "/dashboard/app.js",
            axum::routing::get(|| async {
                asset(
                    "text/javascript; charset=utf-8",
                    crate::runtime::dashboard::APP_JS,
                )
            }),
        )
        .route(
            "/dashboard/style.css",
            axum::routing::get(|| async {
                asset(
                    "text/css; charset=utf-8",
                    crate::runtime::dashboard::STYLE_CSS,
                )
            }),
        )
        .route(
            "/api/cluster",
            axum::routing::get(move || {
                let v = cluster();
                async move {
                    if let Some(r) = not_here(v.as_ref(), "/api/cluster") {
                        return r;
                    }
                    axum::Json(v).into_response()
                }
            }),
        )
        .route(
            "/api/players/{name}",
            axum::routing::get(move |Path(name): Path<String>, headers: HeaderMap| {
                let allowed = authorized(&headers, &token);
                let v = current();
                async move {
                    if !allowed {
                        return unauthorized();
                    }
                    if let Some(r) = not_here(v.as_ref(), &format!("/api/players/{name}")) {
                        return r;
                    }
                    match v {
                        None => no_master(),
                        Some(v) => match v.player(&name) {
                            Some(p) => axum::Json(p).into_response(),
                            None => (
                                StatusCode::NOT_FOUND,
                                axum::Json(serde_json::json!({
                                    "error": format!("no player named {name:?} is logged in")
                                })),
                            )
                                .into_response(),
                        },
                    }
                }
            }),
        )
        .merge(drain_route)
        .merge(audit_route)
}

/// `GET /api/audit`: the latest ownership audit, to the operator.
fn audit_router(view: SharedView, token: Arc<String>) -> axum::Router {
    axum::Router::new().route(
        "/api/audit",
        axum::routing::get(move |headers: HeaderMap| {
            let allowed = authorized(&headers, &token);
            let v = view.lock().unwrap_or_else(PoisonError::into_inner).clone();
            async move {
                if !allowed {
                    return unauthorized();
                }
                // A shard without the master role holds no audit: it points to the master's.
                if let Some(r) = not_here(v.as_ref(), "/api/audit") {
                    return r;
                }
                match v {
                    None => no_master(),
                    Some(v) => axum::Json(&*v.audit_full).into_response(),
                }
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Master;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use zonescaler_shared::ShardId;
    use zonescaler_shared::cellmap::CellGrid;
    use zonescaler_shared::config::WorldConfig;
    use zonescaler_shared::protocol::{JoinRequest, MemberInfo, ShardLoad};

    /// `GET path` over a real TCP connection, with an optional bearer token: (status, body).
    async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
        request(addr, "GET", path, token).await
    }

    async fn request(
        addr: SocketAddr,
        method: &str,
        path: &str,
        token: Option<&str>,
    ) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.expect("request sent");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("response read");
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status line");
        let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
        (status, body)
    }

    async fn serve_with(partition: Option<PartitionSwitch>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("bound");
        let view: SharedView = Arc::new(Mutex::new(None));
        let commands = ApiCommands::default();
        tokio::spawn(serve_http(
            listener,
            view,
            commands,
            "tok".into(),
            partition,
        ));
        addr
    }

    #[tokio::test]
    async fn the_partition_switch_answers_only_where_enabled_and_to_the_operator() {
        let path = "/api/debug/partition?ms=5000";
        let off = serve_with(None).await;
        let (status, body) = request(off, "POST", path, Some("tok")).await;
        assert_eq!(status, 404, "not enabled: {body}");

        let switch = PartitionSwitch::default();
        let on = serve_with(Some(switch.clone())).await;
        let (status, _) = request(on, "POST", path, None).await;
        assert_eq!(status, 401, "the operator's token is needed");
        assert!(!switch.is_cut());
        let (status, body) = request(on, "POST", "/api/debug/partition?ms=x", Some("tok")).await;
        assert_eq!(status, 400, "{body}");
        let too_long = format!("/api/debug/partition?ms={}", PARTITION_MS_MAX + 1);
        let (status, _) = request(on, "POST", &too_long, Some("tok")).await;
        assert_eq!(status, 400, "bounded");
        assert!(!switch.is_cut(), "refusals cut nothing");
        let (status, body) = request(on, "POST", path, Some("tok")).await;
        assert_eq!(status, 202, "{body}");
        assert!(body.contains("5000"), "{body}");
        assert!(switch.is_cut(), "the links are cut");
        let (status, _) = request(on, "POST", "/api/debug/partition?ms=0", Some("tok")).await;
        assert_eq!(status, 202);
        assert!(!switch.is_cut(), "ms=0 heals");
    }

    #[tokio::test]
    async fn the_api_says_which_shard_a_player_is_on_to_the_operator_only() {
        let view: SharedView = Arc::new(Mutex::new(None));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("bound");
        tokio::spawn(serve_http(
            listener,
            view.clone(),
            ApiCommands::default(),
            "s3cret".into(),
            None,
        ));
        let op = Some("s3cret");

        let (status, body) = get(addr, "/api/players/ann", op).await;
        assert_eq!(status, 503, "no master view yet: {body}");

        let me = MemberInfo {
            id: ShardId(0),
            client_addr: "127.0.0.1:4433".into(),
            link_addr: "127.0.0.1:5433".into(),
            metrics_addr: String::new(),
            http_addr: String::new(),
            weight: 1,
        };
        let mut m = Master::new(CellGrid::from_config(&WorldConfig::default()), 2, me, 0);
        let req = JoinRequest {
            client_addr: "127.0.0.1:4434".into(),
            link_addr: "127.0.0.1:5434".into(),
            metrics_addr: String::new(),
            http_addr: String::new(),
            weight: 1,
        };
        let joined = m.join(req, 0).expect("joins");
        m.place().expect("placed");
        m.heartbeat(
            joined,
            ShardLoad {
                players_arrived: vec!["ann".into()],
                ..ShardLoad::default()
            },
            10,
        );
        *view.lock().expect("not poisoned") = Some(m.view());

        let (status, body) = get(addr, "/api/players/ann", None).await;
        assert_eq!(status, 401, "no token, no lookup: {body}");
        assert!(body.contains("API token"), "{body}");
        let (status, _) = get(addr, "/api/players/ann", Some("wrong")).await;
        assert_eq!(status, 401, "a wrong token is no token");

        let (status, body) = get(addr, "/api/players/ann", op).await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(v["shard"], 1, "{body}");
        assert_eq!(v["addr"], "127.0.0.1:4434", "{body}");

        let (status, body) = get(addr, "/api/players/bob", op).await;
        assert_eq!(status, 404, "{body}");
        assert!(
            body.contains("no player named \\\"bob\\\" is logged in"),
            "{body}"
        );

        let (status, body) = get(addr, "/api/cluster", None).await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("\"players\":1") && !body.contains("ann"),
            "the cluster view counts players without listing them: {body}"
        );
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(v["cells"].as_array().map(Vec::len), Some(64), "{body}");

        let (status, body) = get(addr, "/", None).await;
        assert_eq!(status, 200);
        assert!(body.contains("<html"), "the dashboard page: {body}");
    }

    /// A placed two-shard master whose shards both own entity 0:7 at generation 2 (two
    /// owners), audited.
    fn master_with_a_duplicate() -> Master {
        use zonescaler_shared::NetId;
        use zonescaler_shared::protocol::OwnershipReport;
        let me = MemberInfo {
            id: ShardId(0),
            client_addr: "127.0.0.1:4433".into(),
            link_addr: "127.0.0.1:5433".into(),
            metrics_addr: String::new(),
            http_addr: String::new(),
            weight: 1,
        };
        let mut m = Master::new(CellGrid::from_config(&WorldConfig::default()), 2, me, 0);
        let joined = m
            .join(
                JoinRequest {
                    client_addr: "127.0.0.1:4434".into(),
                    link_addr: "127.0.0.1:5434".into(),
                    metrics_addr: String::new(),
                    http_addr: String::new(),
                    weight: 1,
                },
                0,
            )
            .expect("joins");
        m.place().expect("placed");
        let id = |n| NetId::new(ShardId(0), n).expect("48 bits");
        let owned = [vec![(id(5), 0), (id(7), 2)], vec![(id(7), 2)]];
        for (shard, owned) in [ShardId(0), joined].into_iter().zip(owned) {
            let r = OwnershipReport {
                taken_ms: 1_000,
                owned,
                in_transit: vec![(id(9), 1)],
                ..OwnershipReport::default()
            };
            for p in r.parts(1) {
                m.audit_part(shard, p, 1_000);
            }
        }
        m.take_audit(1_100);
        m
    }

    #[tokio::test]
    async fn the_audit_is_served_to_the_operator_with_its_duplicates() {
        let view: SharedView = Arc::new(Mutex::new(None));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("bound");
        tokio::spawn(serve_http(
            listener,
            view.clone(),
            ApiCommands::default(),
            "s3cret".into(),
            None,
        ));
        let op = Some("s3cret");
        let (status, body) = get(addr, "/api/audit", op).await;
        assert_eq!(status, 503, "no master view yet: {body}");
        *view.lock().expect("not poisoned") = Some(master_with_a_duplicate().view());

        let (status, body) = get(addr, "/api/audit", None).await;
        assert_eq!(status, 401, "no token, no audit: {body}");
        let (status, _) = get(addr, "/api/audit", Some("wrong")).await;
        assert_eq!(status, 401, "a wrong token is no token");
        let (status, body) = get(addr, "/api/audit", op).await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(v["audits_total"], 1, "{body}");
        assert_eq!(v["complete"], true, "{body}");
        assert_eq!(v["total_owned"], 3, "{body}");
        assert_eq!(v["total_in_transit"], 2, "{body}");
        assert_eq!(v["distinct_entities"], 3, "{body}");
        assert_eq!(v["duplicates"], 1, "{body}");
        assert_eq!(v["duplicates_total"], 1, "{body}");
        assert_eq!(v["listed"][0]["id"], "0:7", "{body}");
        assert_eq!(v["listed"][0]["rule"], "same_generation", "{body}");
        assert_eq!(v["listed"][0]["owners"].as_array().map(Vec::len), Some(2));
        assert_eq!(v["shards"].as_array().map(Vec::len), Some(2), "{body}");

        let (status, body) = get(addr, "/api/cluster", None).await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(v["audit"]["duplicates"], 1, "the summary: {body}");
        assert_eq!(v["audit"]["total_owned"], 3, "{body}");
        assert!(
            !body.contains("0:7"),
            "the open view names no entity: {body}"
        );

        // On a shard without the master role every API route points to the master's, the
        // audit too (it answered its own empty one, so a poller saw no audit after a failover).
        *view.lock().expect("not poisoned") =
            Some(ClusterView::pointer(ShardId(2), 3, "127.0.0.1:9".into()));
        for path in ["/api/audit", "/api/cluster"] {
            let (status, body) = get(addr, path, op).await;
            assert_eq!(status, 307, "{path}: {body}");
            let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            assert_eq!(
                (v["master"].as_u64(), v["term"].as_u64()),
                (Some(2), Some(3))
            );
            assert_eq!(v["api"], "127.0.0.1:9", "{body}");
        }
        let (status, _) = get(addr, "/api/audit", None).await;
        assert_eq!(status, 401, "no token, no pointer either");
    }
}
