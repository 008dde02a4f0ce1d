//! The admin API, on its own listener and guarded by the admin token
//! (`Authorization: Bearer <token>`, compared with the configured SHA-256 in
//! constant time): register, list, show, disable, enable, rotate the key
//! of, and delete agents; list and lift kernel blocks.
//!
//! | method and path | does |
//! | --- | --- |
//! | `GET /agents` | every agent (config and registered), never a key or hash |
//! | `POST /agents` | registers `{tenant, name, kind?, labels?, budget?, tool_budgets?}`; 201 with the agent and its API key, shown this once |
//! | `GET /agents/{id}` | one agent |
//! | `POST /agents/{id}/disable`, `/enable` | |
//! | `POST /agents/{id}/rotate` | a new key; `{overlap_s}` (default 3600) keeps the old ones valid meanwhile |
//! | `DELETE /agents/{id}` | |
//! | `GET /blocks` | kernel blocks in force |
//! | `DELETE /blocks/{kind}/{key}` | lifts one (`identity/<slot>`, `prefix/<cidr>`) |
//! | `GET /audit?tenant=&agent=&user=&tool=&kind=&decision=&since=&until=&intent=&call_id=&limit=&order=` | matching audit records, streamed as JSON Lines |
//! | `GET /audit/verify` | checks every CRC and link of the trail and every checkpoint against this node's key; lists retirements; names the first bad record |

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::BoxBody};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header};
use serde_json::{Value, json};

use crate::{
    identity::apikey,
    store::registry::{Agent, AgentRecord, NewAgent, Registry, RegistryError},
};

pub struct AdminState {
    pub registry: Arc<Registry>,
    pub token_sha256: [u8; 32],
    pub escalation: Option<Arc<crate::identity::escalation::Escalation>>,
    pub policy_store: Arc<crate::store::policy::PolicyStore>,
    pub policy_dir: std::path::PathBuf,
    /// The audit trail's folder (read for queries while the writer appends).
    pub audit_dir: std::path::PathBuf,
    /// The checkpoint key `/audit/verify` holds the trail to (this node's),
    /// and the frames it may go without a checkpoint.
    pub audit_key: Option<[u8; 32]>,
    pub audit_checkpoint_records: u64,
}

type Resp = Response<BoxBody<Bytes, Infallible>>;

fn json_resp(status: StatusCode, v: Value) -> Resp {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .expect("static parts")
}

/// Streams the records `query` matches as JSON Lines, read on a blocking
/// thread and sent in chunks as they are found.
fn audit_stream(dir: std::path::PathBuf, query: crate::audit::output::Query) -> Resp {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, Infallible>>(8);
    tokio::task::spawn_blocking(move || {
        /// Lines gathered into chunks of about this size.
        struct Chunks {
            tx: tokio::sync::mpsc::Sender<Result<hyper::body::Frame<Bytes>, Infallible>>,
            buf: Vec<u8>,
        }
        impl std::io::Write for Chunks {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.buf.extend_from_slice(b);
                if self.buf.len() >= 64 * 1024 {
                    self.flush()?;
                }
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                if self.buf.is_empty() {
                    return Ok(());
                }
                let chunk = Bytes::from(std::mem::take(&mut self.buf));
                self.tx
                    .blocking_send(Ok(hyper::body::Frame::data(chunk)))
                    .map_err(|_| std::io::Error::other("the client went away"))
            }
        }
        let mut out = Chunks {
            tx,
            buf: Vec::new(),
        };
        match crate::audit::output::run(&dir, &query, crate::audit::output::Format::Jsonl, &mut out)
        {
            Ok(_) => {
                let _ = std::io::Write::flush(&mut out);
            }
            Err(e) => tracing::debug!(error = %e, "an audit query stream ended early"),
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed())
        .expect("static parts")
}

fn error(status: StatusCode, message: impl Into<String>) -> Resp {
    json_resp(status, json!({"error": message.into()}))
}

fn registry_error(e: RegistryError) -> Resp {
    let status = match &e {
        RegistryError::Invalid(_) => StatusCode::BAD_REQUEST,
        RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
        RegistryError::FromConfig(_) => StatusCode::CONFLICT,
        RegistryError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

/// An agent as the admin API shows it: never a key or a hash.
fn view(agent: &Agent, record: Option<&AgentRecord>) -> Value {
    let mut v = json!({
        "id": agent.id,
        "tenant": agent.tenant,
        "name": agent.name,
        "kind": agent.kind,
        "labels": agent.labels,
        "disabled": agent.disabled,
        "source": agent.source,
        "slot": agent.slot,
    });
    if let Some(r) = record {
        v["created_unix_s"] = r.created_unix_s.into();
        v["keys"] = r
            .keys
            .iter()
            .map(
                |k| json!({"created_unix_s": k.created_unix_s, "expires_unix_s": k.expires_unix_s}),
            )
            .collect();
        v["budget"] = serde_json::to_value(r.budget).unwrap_or_default();
    }
    v
}

fn show(reg: &Registry, id: &str) -> Resp {
    let index = reg.index();
    let Some(agent) = index.agents.get(id) else {
        return error(StatusCode::NOT_FOUND, format!("no agent `{id}`"));
    };
    let record = reg.record(id).ok();
    json_resp(StatusCode::OK, view(agent, record.as_ref()))
}

async fn body_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, Resp> {
    let bytes = Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|_| error(StatusCode::PAYLOAD_TOO_LARGE, "body over 64 KiB"))?
        .to_bytes();
    let bytes = if bytes.is_empty() {
        Bytes::from_static(b"{}")
    } else {
        bytes
    };
    serde_json::from_slice(&bytes).map_err(|e| error(StatusCode::BAD_REQUEST, format!("body: {e}")))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Rotate {
    #[serde(default = "default_overlap")]
    overlap_s: u64,
}

fn default_overlap() -> u64 {
    3600
}

async fn respond(state: Arc<AdminState>, req: Request<Incoming>) -> Resp {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !apikey::matches(token, &[state.token_sha256]) {
        let mut r = error(StatusCode::UNAUTHORIZED, "admin token required");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    let path: Vec<String> = req
        .uri()
        .path()
        .trim_matches('/')
        .split('/')
        .map(str::to_string)
        .collect();
    let parts: Vec<&str> = path.iter().map(String::as_str).collect();
    let (method, rest) = (req.method().clone(), parts.get(1..).unwrap_or_default());
    match parts.first().copied() {
        Some("agents") => agents(&state, method, rest, req).await,
        Some("policy") => policy(&state, method, rest, req).await,
        Some("audit") => audit(&state, method, rest, req).await,
        Some("blocks") => blocks(&state, method, rest),
        _ => not_found(),
    }
}

fn not_found() -> Resp {
    error(
        StatusCode::NOT_FOUND,
        "not found; see GET /agents, POST /agents, GET /blocks",
    )
}

/// Runs `f` off the async threads (registry writes commit to disk).
async fn blocking(f: Box<dyn FnOnce() -> Resp + Send>) -> Resp {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "admin task failed"))
}

/// `/agents`: list, register, show, disable or enable, rotate a key, delete.
async fn agents(state: &AdminState, method: Method, rest: &[&str], req: Request<Incoming>) -> Resp {
    let reg = state.registry.clone();
    let now = crate::clock::unix_s();
    match (method, rest) {
        (Method::GET, []) => {
            let index = reg.index();
            let records = reg.records().unwrap_or_default();
            let mut agents: Vec<&Arc<Agent>> = index.agents.values().collect();
            agents.sort_by(|a, b| a.id.cmp(&b.id));
            let list: Vec<Value> = agents
                .iter()
                .map(|a| view(a, records.iter().find(|r| r.id == a.id)))
                .collect();
            json_resp(StatusCode::OK, json!({"agents": list}))
        }
        (Method::POST, []) => {
            let new: NewAgent = match body_json(req).await {
                Ok(n) => n,
                Err(r) => return r,
            };
            blocking(Box::new(move || match reg.register(new, now) {
                Ok((rec, key)) => {
                    let index = reg.index();
                    let mut v = json!({"api_key": key});
                    if let Some(a) = index.agents.get(&rec.id) {
                        v["agent"] = view(a, Some(&rec));
                    }
                    json_resp(StatusCode::CREATED, v)
                }
                Err(e) => registry_error(e),
            }))
            .await
        }
        (Method::GET, [id]) => show(&reg, id),
        (Method::POST, [id, action @ ("disable" | "enable")]) => {
            let (id, off) = (id.to_string(), *action == "disable");
            blocking(Box::new(move || match reg.set_disabled(&id, off, now) {
                Ok(_) => show(&reg, &id),
                Err(e) => registry_error(e),
            }))
            .await
        }
        (Method::POST, [id, "rotate"]) => {
            let id = id.to_string();
            let r: Rotate = match body_json(req).await {
                Ok(r) => r,
                Err(r) => return r,
            };
            blocking(Box::new(move || match reg.rotate(&id, r.overlap_s, now) {
                Ok((rec, key)) => {
                    let index = reg.index();
                    let mut v = json!({"api_key": key});
                    if let Some(a) = index.agents.get(&rec.id) {
                        v["agent"] = view(a, Some(&rec));
                    }
                    json_resp(StatusCode::OK, v)
                }
                Err(e) => registry_error(e),
            }))
            .await
        }
        (Method::DELETE, [id]) => {
            let id = id.to_string();
            blocking(Box::new(move || match reg.delete(&id, now) {
                Ok(()) => json_resp(StatusCode::OK, json!({"deleted": id})),
                Err(e) => registry_error(e),
            }))
            .await
        }
        _ => not_found(),
    }
}

/// `/policy`: the activated versions, and rollback to one.
async fn policy(state: &AdminState, method: Method, rest: &[&str], req: Request<Incoming>) -> Resp {
    match (method, rest) {
        (Method::GET, ["versions"]) => match state.policy_store.list() {
            Ok(all) => json_resp(
                StatusCode::OK,
                json!({"versions": all.iter().map(|a| json!({
                    "version": a.version, "activated_unix_s": a.activated_unix_s,
                    "message": a.message, "rules": a.rules,
                    "files": a.sources.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
                })).collect::<Vec<_>>()}),
            ),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, crate::error_chain(&e)),
        },
        (Method::POST, ["rollback"]) => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Rollback {
                #[serde(default)]
                version: Option<String>,
            }
            let r: Rollback = match body_json(req).await {
                Ok(r) => r,
                Err(r) => return r,
            };
            let (store, dir) = (state.policy_store.clone(), state.policy_dir.clone());
            blocking(Box::new(move || {
                let target = match store.target(r.version.as_deref()) {
                    Ok(t) => t,
                    Err(e) => return error(StatusCode::NOT_FOUND, crate::error_chain(&e)),
                };
                match crate::store::policy::restore(&dir, &target) {
                    Ok(()) => json_resp(
                        StatusCode::OK,
                        json!({"restored": target.version,
                               "note": "the policy files are back as they were; the live reload activates them within a second"}),
                    ),
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, crate::error_chain(&e)),
                }
            }))
            .await
        }
        _ => not_found(),
    }
}

/// `/audit`: a filtered query streamed as JSON Lines, and verification.
async fn audit(state: &AdminState, method: Method, rest: &[&str], req: Request<Incoming>) -> Resp {
    match (method, rest) {
        (Method::GET, []) => {
            let query = req.uri().query().unwrap_or_default();
            let pairs: Vec<(String, String)> = url_pairs(query);
            match crate::audit::output::Query::from_pairs(
                pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                crate::clock::unix_us(),
            ) {
                Ok(q) => audit_stream(state.audit_dir.clone(), q),
                Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
            }
        }
        (Method::GET, ["verify"]) => {
            let dir = state.audit_dir.clone();
            let expect = crate::audit::query::Expect {
                keys: state.audit_key.into_iter().collect(),
                heads: Vec::new(),
                max_unsigned: Some(state.audit_checkpoint_records),
            };
            match tokio::task::spawn_blocking(move || {
                crate::audit::query::verify_with(&dir, &expect)
            })
            .await
            {
                Ok(Ok(r)) => json_resp(StatusCode::OK, r.to_json()),
                Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        _ => not_found(),
    }
}

/// `/blocks`: escalation's blocks, and lifting one.
fn blocks(state: &AdminState, method: Method, rest: &[&str]) -> Resp {
    match (method, rest) {
        (Method::GET, []) => match &state.escalation {
            Some(e) => json_resp(StatusCode::OK, e.blocks_json()),
            None => json_resp(StatusCode::OK, json!({"blocks": [], "kernel": false})),
        },
        (Method::DELETE, [kind, rest @ ..]) => match &state.escalation {
            Some(e) => match e.lift(kind, &rest.join("/")) {
                Ok(true) => json_resp(
                    StatusCode::OK,
                    json!({"lifted": format!("{kind}/{}", rest.join("/"))}),
                ),
                Ok(false) => error(StatusCode::NOT_FOUND, "no such block"),
                Err(m) => error(StatusCode::BAD_REQUEST, m.to_string()),
            },
            None => error(StatusCode::NOT_FOUND, "no kernel tier: nothing is blocked"),
        },
        _ => not_found(),
    }
}

/// `a=1&b=x%20y` → [("a","1"), ("b","x y")] (`+` is a space).
fn url_pairs(q: &str) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    let hex = |c: u8| (c as char).to_digit(16);
                    match (hex(b[i + 1]), hex(b[i + 2])) {
                        (Some(h), Some(l)) => {
                            out.push((h * 16 + l) as u8);
                            i += 2;
                        }
                        _ => out.push(b'%'),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Binds the admin listener; returns the bound address and the serving task.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<AdminState>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    crate::net::serve_http1(addr, "admin", move |req| respond(state.clone(), req)).await
}

/// A blocking HTTP/1.1 request to the admin API (the `dome agents` and
/// `dome blocks` commands): (status, body).
pub fn call(
    addr: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, rest.to_string()))
}
