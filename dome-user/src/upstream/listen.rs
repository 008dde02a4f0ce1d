//! What an upstream says on its own: the session's GET stream, or a
//! stateless upstream's `subscriptions/listen` stream, and the resource
//! URIs Dome's clients want updates for.

use super::*;

impl Upstream {
    /// Opens the session's GET stream and passes what arrives to the sink,
    /// reconnecting while the upstream session lasts.
    pub(super) fn spawn_listener(&self, session: String) {
        let (Some(me), Some(_)) = (self.me.get().and_then(|w| w.upgrade()), self.sink.get()) else {
            return;
        };
        tokio::spawn(async move {
            loop {
                let current = match &**me.era.load() {
                    UpstreamEra::Session {
                        id: Some(id),
                        version,
                    } if *id == session => version.clone(),
                    _ => return,
                };
                let req = Request::get(me.pool.target().clone())
                    .header(header::ACCEPT, "text/event-stream")
                    .header(protocol::H_SESSION, session.as_str())
                    .header(protocol::H_VERSION, current)
                    .body(Full::new(Bytes::new()));
                let Ok(req) = req else { return };
                match me.pool.send(req).await {
                    Ok(resp) if resp.status() == StatusCode::OK => {
                        let mut body = resp.into_body();
                        let mut parser = me.sse_parser();
                        while let Some(Ok(frame)) = body.frame().await {
                            let Some(data) = frame.data_ref() else {
                                continue;
                            };
                            if let Err(e) = parser.push(data) {
                                tracing::warn!(upstream = %me.name(), error = %e, "its stream is dropped and opened again");
                                break;
                            }
                            while let Some(ev) = parser.next_event() {
                                if let (Ok(v), Some(sink)) =
                                    (serde_json::from_str::<Value>(&ev), me.sink.get())
                                {
                                    sink(&v);
                                }
                            }
                        }
                    }
                    // 405: the upstream has no stream to offer; nothing to listen to.
                    Ok(resp) if resp.status() == StatusCode::METHOD_NOT_ALLOWED => return,
                    _ => {}
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// A stateless upstream has no standing stream: Dome opens one
    /// `subscriptions/listen` for the change notifications the upstream
    /// offers and the resource URIs its clients want, passes what arrives to
    /// the sink, and reopens it when the wanted URIs change or it ends.
    pub(super) fn spawn_stateless_listener(&self) {
        if !dome_core::subscriptions::offers_changes(&self.capabilities()) {
            return;
        }
        let (Some(me), Some(_)) = (self.me.get().cloned(), self.sink.get()) else {
            return;
        };
        let mut changed = self.listen_filter.subscribe();
        tokio::spawn(async move {
            loop {
                let Some(up) = me.upgrade() else { return };
                if !matches!(**up.era.load(), UpstreamEra::Stateless { .. }) {
                    return;
                }
                let generation = *changed.borrow_and_update();
                let opened = up.open_listen().await;
                up.listen_opened.send_replace(generation);
                let reopen = match opened {
                    Ok(resp) if resp.status() == StatusCode::OK => {
                        let mut body = resp.into_body();
                        let mut parser = up.sse_parser();
                        // Hold only a weak reference while waiting, so a
                        // reload that drops this upstream ends the stream.
                        drop(up);
                        loop {
                            let frame = tokio::select! {
                                f = body.frame() => f,
                                _ = changed.changed() => break true,
                            };
                            let Some(Ok(frame)) = frame else { break false };
                            let Some(data) = frame.data_ref() else {
                                continue;
                            };
                            let Some(up) = me.upgrade() else { return };
                            if let Err(e) = parser.push(data) {
                                tracing::warn!(upstream = %up.name(), error = %e, "its listen stream is dropped and opened again");
                                break false;
                            }
                            while let Some(ev) = parser.next_event() {
                                let Ok(mut v) = serde_json::from_str::<Value>(&ev) else {
                                    continue;
                                };
                                if v["method"] == "notifications/subscriptions/acknowledged"
                                    || v.get("method").is_none()
                                {
                                    continue;
                                }
                                // The subscription id is Dome's own; each
                                // client's stream is stamped with its own.
                                if let Some(m) = v["params"]["_meta"].as_object_mut() {
                                    m.remove(protocol::META_SUBSCRIPTION_ID);
                                }
                                if let Some(sink) = up.sink.get() {
                                    sink(&v);
                                }
                            }
                        }
                    }
                    Ok(resp) => {
                        tracing::warn!(upstream = %up.name(), status = %resp.status(), "subscriptions/listen refused");
                        false
                    }
                    Err(e) => {
                        tracing::debug!(upstream = %up.name(), error = %e, "subscriptions/listen failed");
                        false
                    }
                };
                if !reopen {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = changed.changed() => {}
                    }
                }
            }
        });
    }

    /// Opens a `subscriptions/listen` stream with the current filter.
    pub(super) async fn open_listen(
        &self,
    ) -> Result<Response<crate::upstream::pool::Body>, UpstreamError> {
        let UpstreamEra::Stateless { version } = (**self.era.load()).clone() else {
            return Err(UpstreamError::Invalid(
                self.name().into(),
                "not a stateless upstream".into(),
            ));
        };
        let caps = self.capabilities();
        let mut filter = serde_json::Map::new();
        for (kind, key) in [
            ("tools", "toolsListChanged"),
            ("prompts", "promptsListChanged"),
            ("resources", "resourcesListChanged"),
        ] {
            if caps[kind]["listChanged"] == true {
                filter.insert(key.into(), true.into());
            }
        }
        let uris: Vec<String> = self
            .wanted
            .lock()
            .expect("wanted lock")
            .keys()
            .cloned()
            .collect();
        if !uris.is_empty() {
            filter.insert("resourceSubscriptions".into(), json!(uris));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "subscriptions/listen",
            "params": {"notifications": filter, "_meta": stateless_meta(&version)}});
        let req = self.build("subscriptions/listen", None, &body)?;
        // Dome's own standing stream: it holds no slot once it has begun.
        Ok(self.exchange(req, None).await?.0)
    }

    /// A client of Dome's starts (`on`) or stops wanting updates of `uri`,
    /// which this upstream serves. The upstream hears of it only when the
    /// first client starts or the last one stops: a session-era upstream by
    /// `resources/subscribe`/`unsubscribe` (its answer is returned), a
    /// stateless one by its listen stream reopening with the new filter
    /// (`None`: nothing to relay).
    pub async fn want(&self, uri: &str, on: bool) -> Result<Option<Value>, UpstreamError> {
        let edge = {
            let mut wanted = self.wanted.lock().expect("wanted lock");
            let n = wanted.entry(uri.to_string()).or_insert(0);
            if on {
                *n += 1;
                *n == 1
            } else {
                *n = n.saturating_sub(1);
                let last = *n == 0;
                if last {
                    wanted.remove(uri);
                }
                last
            }
        };
        if !edge {
            return Ok(None);
        }
        self.ensure_connected().await?;
        if matches!(**self.era.load(), UpstreamEra::Stateless { .. }) {
            self.listen_filter.send_modify(|g| *g += 1);
            let generation = *self.listen_filter.borrow();
            // Until the stream carries the new filter. A reopen is a connect
            // and a request head, so the connect timeout bounds the wait: a
            // listener that is gone or stuck must not hold the client.
            let mut opened = self.listen_opened.subscribe();
            let bound = Duration::from_millis(self.config.connect_timeout_ms);
            let _ = tokio::time::timeout(bound, opened.wait_for(|g| *g >= generation)).await;
            return Ok(None);
        }
        let method = if on {
            "resources/subscribe"
        } else {
            "resources/unsubscribe"
        };
        let answer = match self.request(method, json!({"uri": uri})).await {
            Ok((Reply::Json(v), _)) => Ok(v),
            Ok((Reply::Raw(b), _)) => serde_json::from_slice(&b)
                .map_err(|e| UpstreamError::Invalid(self.name().into(), format!("not JSON: {e}"))),
            Ok((Reply::Stream(st), _)) => first_response(self, st).await,
            Err(e) => Err(e),
        };
        let refused = !matches!(&answer, Ok(v) if v.get("result").is_some());
        if on && refused {
            // Not subscribed after all: the next client to ask tries again.
            let mut wanted = self.wanted.lock().expect("wanted lock");
            if let Some(n) = wanted.get_mut(uri) {
                *n -= 1;
                if *n == 0 {
                    wanted.remove(uri);
                }
            }
        }
        answer.map(Some)
    }
}
