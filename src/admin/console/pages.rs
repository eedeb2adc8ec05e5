//! The console's pages and actions, each read from or sent to the admin
//! API's route of the same meaning (`Admin::call`).

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::html::{attr, csrf_field, esc, fields, or_dash, page, query, state, table};
use super::session::Session;
use super::{Form, Reply, get};
use crate::admin::api::{DeliveryDetail, DeliveryPage, DeliveryView, EventView, ReplayResult, SubjectView};
use crate::admin::overview::OverviewView;
use crate::admin::quarantine::{QuarantineDetail, QuarantinePageView, ReverifyResult};
use crate::admin::{Admin, ApiError};
use crate::store::DeliveryState;

/// The filters of `GET /admin/deliveries`, as the console's forms name them.
const FILTERS: [&str; 6] = ["state", "source", "endpoint", "type", "since", "until"];
/// Rows per page of the console's listings.
const PAGE_ROWS: usize = 50;
/// Characters of an error shown in a listing.
const SHORT: usize = 80;

/// What a redirect's `done` parameter says; fixed texts, so a link cannot
/// put words on the page.
fn notice(query: &Form) -> Option<&'static str> {
    match get(query, "done") {
        "replayed" => Some("Replayed: the delivery is pending and goes out shortly."),
        "not-replayed" => Some("Nothing was replayed: the delivery is not dead, discarded or delivered."),
        "discarded" => Some("Discarded."),
        _ => None,
    }
}

/// The path's segments after `/ui/`, percent-decoded (ids are sent on
/// encoded again, once).
fn segments(path: &str) -> Vec<String> {
    path.trim_start_matches("/ui/")
        .split('/')
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect()
}

fn short(s: &str) -> String {
    match s.char_indices().nth(SHORT) {
        Some((i, _)) => format!("{}…", esc(&s[..i])),
        None => esc(s),
    }
}

fn link_delivery(d: &DeliveryView) -> String {
    format!("<a href=\"/ui/deliveries/{}\">{}</a>", attr(d.id.as_str()), esc(d.id.as_str()))
}

/// The filters present in `form`, in `FILTERS` order.
pub(super) fn filter_pairs(form: &Form) -> Vec<(&'static str, &str)> {
    FILTERS.iter().map(|k| (*k, get(form, k).trim())).filter(|(_, v)| !v.is_empty()).collect()
}

fn error_page(e: ApiError, csrf: &str, current: &str) -> Reply {
    let ApiError(status, code, message) = e;
    let body = format!("<p class=\"error\" role=\"alert\">{}</p><p>({})</p>", esc(&message), esc(code));
    Reply::Page(status, page("Could not do that", current, Some(csrf), None, &body))
}

pub(super) fn sign_in(problem: Option<&str>) -> Reply {
    let problem = problem.map(|p| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(p))).unwrap_or_default();
    let body = format!(
        "{problem}<form method=\"post\" action=\"/ui/login\" class=\"stack\">\
         <label for=\"token\">Admin token</label>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required autofocus>\
         <button type=\"submit\">Sign in</button></form>\
         <p>The token is <code>server.admin_token</code> in the relay's configuration.</p>"
    );
    Reply::Page(StatusCode::OK, page("Sign in", "", None, None, &body))
}

impl Admin {
    pub(super) async fn console_page(&self, path: &str, q: &Form, session: &Session) -> Reply {
        let csrf = session.csrf.as_str();
        let segments = segments(path);
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let (current, result) = match segments.as_slice() {
            [""] => ("/ui/", self.overview_page(csrf).await),
            ["deliveries"] => ("/ui/deliveries", self.deliveries_page(q, csrf).await),
            ["deliveries", id] => ("/ui/deliveries", self.delivery_page(id, q, csrf).await),
            ["replay"] => ("/ui/replay", self.replay_page(q, csrf).await),
            ["replays", id] => ("/ui/replay", self.replay_job_page(id, csrf).await),
            ["subjects"] => ("/ui/subjects", self.subject_page(q, csrf).await),
            ["quarantine"] => ("/ui/quarantine", self.quarantine_page(q, csrf).await),
            ["quarantine", id] => ("/ui/quarantine", self.quarantine_item_page(id, q, csrf).await),
            _ => ("", Err(ApiError::not_found("no such page"))),
        };
        result.unwrap_or_else(|e| error_page(e, csrf, current))
    }

    pub(super) async fn console_action(&self, path: &str, form: &Form, session: &Session) -> Reply {
        let segments = segments(path);
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let result = match segments.as_slice() {
            ["deliveries", id, "replay"] => {
                let include = if get(form, "include_delivered") == "true" { "?include_delivered=true" } else { "" };
                let r: Result<ReplayResult, _> =
                    self.call(Method::POST, &format!("/admin/deliveries/{}/replay{include}", attr(id)), None).await;
                r.map(|r| {
                    let done = if r.replayed > 0 { "replayed" } else { "not-replayed" };
                    format!("/ui/deliveries/{}?done={done}", attr(id))
                })
            }
            ["deliveries", id, "discard"] => {
                let body = json!({"reason": get(form, "reason")});
                let r: Result<Value, _> =
                    self.call(Method::POST, &format!("/admin/deliveries/{}/discard", attr(id)), Some(body)).await;
                r.map(|_| format!("/ui/deliveries/{}?done=discarded", attr(id)))
            }
            ["replay"] => self.replay_action(form).await,
            ["quarantine", "reverify"] => {
                let id = get(form, "id");
                let r: Result<ReverifyResult, _> =
                    self.call(Method::POST, "/admin/quarantine/reverify", Some(json!({"ids": [id]}))).await;
                // The item may be gone (admitted): the outcome is shown here.
                return match r {
                    Ok(r) => {
                        let outcome = esc(&serde_json::to_string_pretty(&r.items).unwrap_or_default());
                        let body = format!(
                            "<pre class=\"payload\">{outcome}</pre><p><a href=\"/ui/quarantine\">Back to the quarantine</a></p>"
                        );
                        Reply::Page(
                            StatusCode::OK,
                            page("Reverified", "/ui/quarantine", Some(&session.csrf), None, &body),
                        )
                    }
                    Err(e) => error_page(e, &session.csrf, "/ui/quarantine"),
                };
            }
            _ => Err(ApiError::not_found("no such action")),
        };
        match result {
            Ok(to) => Reply::SeeOther(to),
            Err(e) => error_page(e, &session.csrf, ""),
        }
    }

    async fn overview_page(&self, csrf: &str) -> Result<Reply, ApiError> {
        let o: OverviewView = self.call(Method::GET, "/admin/overview", None).await?;
        let dead: DeliveryPage = self.call(Method::GET, "/admin/deliveries?state=dead&limit=10", None).await?;
        let states: Vec<Vec<String>> = DeliveryState::ALL
            .iter()
            .map(|s| {
                let n = o.deliveries.get(s).copied().unwrap_or(0);
                vec![
                    format!("<a href=\"/ui/deliveries?state={}\">{}</a>", s.as_str(), state(s.as_str())),
                    n.to_string(),
                ]
            })
            .collect();
        let endpoints: Vec<Vec<String>> = o
            .endpoints
            .iter()
            .map(|e| {
                let tried = e.last_success_at.is_some() || e.last_failure_at.is_some();
                let health = match (e.consecutive_failures, e.configured, tried) {
                    (_, false, _) => "<strong>not configured</strong>".to_owned(),
                    (0, true, false) => "no attempts yet by this relay".to_owned(),
                    (0, true, true) => "ok".to_owned(),
                    (n, true, _) => format!("<strong>failing</strong> ({n} in a row)"),
                };
                vec![
                    format!("<a href=\"/ui/deliveries?endpoint={}\">{}</a>", attr(&e.name), esc(&e.name)),
                    health,
                    e.in_flight.to_string(),
                    or_dash(e.last_success_at.as_deref()),
                    or_dash(e.last_failure_at.as_deref()),
                    e.last_error.as_deref().map(short).unwrap_or_else(|| "—".into()),
                    or_dash(e.oldest_pending_at.as_deref()),
                ]
            })
            .collect();
        let callbacks: Vec<Vec<String>> =
            o.callbacks.iter().map(|c| vec![esc(&c.source), esc(&c.outcome), c.count.to_string()]).collect();
        let body = format!(
            "{}{}<p class=\"hint\">Delivery health is this relay's since it started; oldest pending is the store's.</p>{}{}",
            table("Deliveries by state", &["State", "Deliveries"], &states),
            table(
                "Endpoints",
                &["Endpoint", "Health", "In flight", "Last success", "Last failure", "Last error", "Oldest pending"],
                &endpoints
            ),
            table(
                &format!("Callbacks in the last {} minutes (this relay)", o.window_minutes),
                &["Source", "Outcome", "Callbacks"],
                &callbacks
            ),
            deliveries_table("Latest dead deliveries", &dead.items),
        );
        Ok(Reply::Page(StatusCode::OK, page("Overview", "/ui/", Some(csrf), None, &body)))
    }

    async fn deliveries_page(&self, q: &Form, csrf: &str) -> Result<Reply, ApiError> {
        let filters = filter_pairs(q);
        let mut pairs = filters.clone();
        let limit = PAGE_ROWS.to_string();
        pairs.push(("limit", &limit));
        let cursor = get(q, "cursor");
        pairs.push(("cursor", cursor));
        let list: DeliveryPage = self.call(Method::GET, &format!("/admin/deliveries?{}", query(&pairs)), None).await?;
        let mut body = self.filter_form(q, "/ui/deliveries", "Filter", true);
        body.push_str(&deliveries_table("Deliveries, newest first", &list.items));
        let mut links = Vec::new();
        if let Some(next) = &list.next_cursor {
            let mut next_pairs = filters.clone();
            next_pairs.push(("cursor", next));
            links.push(format!("<a href=\"/ui/deliveries?{}\" rel=\"next\">Next page</a>", esc(&query(&next_pairs))));
        }
        links.push(format!(
            "<a href=\"/ui/replay?{}\">Replay deliveries matching this filter…</a>",
            esc(&query(&filters))
        ));
        body.push_str(&format!("<p class=\"links\">{}</p>", links.join(" · ")));
        Ok(Reply::Page(StatusCode::OK, page("Deliveries", "/ui/deliveries", Some(csrf), None, &body)))
    }

    /// The filter form of `GET /admin/deliveries`, filled from `q`.
    pub(super) fn filter_form(&self, q: &Form, action: &str, button: &str, any_state: bool) -> String {
        let config = self.live.current();
        let chosen = get(q, "state");
        let mut options = String::new();
        if any_state {
            options.push_str("<option value=\"\">any</option>");
        }
        for s in DeliveryState::ALL {
            let selected = if s.as_str() == chosen { " selected" } else { "" };
            options.push_str(&format!("<option{selected}>{}</option>", s.as_str()));
        }
        let datalist = |id: &str, names: Vec<&str>| {
            let opts: String = names.iter().map(|n| format!("<option value=\"{}\">", esc(n))).collect();
            format!("<datalist id=\"{id}\">{opts}</datalist>")
        };
        let text = |name: &str, label: &str, list: &str| {
            let list = if list.is_empty() { String::new() } else { format!(" list=\"{list}\"") };
            format!(
                "<label for=\"f-{name}\">{label}</label><input id=\"f-{name}\" name=\"{name}\" value=\"{}\"{list}>",
                esc(get(q, name))
            )
        };
        format!(
            "<form method=\"get\" action=\"{action}\" class=\"filters\">\
             <label for=\"f-state\">State</label><select id=\"f-state\" name=\"state\">{options}</select>\
             {}{}{}{}{}{}{}<button type=\"submit\">{button}</button></form>",
            text("source", "Source", "sources"),
            text("endpoint", "Endpoint", "endpoints"),
            text("type", "Type", ""),
            text("since", "Since (RFC 3339 or 24h)", ""),
            text("until", "Until", ""),
            datalist("sources", config.sources.iter().map(|s| s.name.as_str()).collect()),
            datalist("endpoints", config.endpoints.iter().map(|e| e.name.as_str()).collect()),
        )
    }

    async fn delivery_page(&self, id: &str, q: &Form, csrf: &str) -> Result<Reply, ApiError> {
        let d: DeliveryDetail = self.call(Method::GET, &format!("/admin/deliveries/{}", attr(id)), None).await?;
        // The delivery's actions stay usable when its event cannot be read.
        let event: Result<EventView, String> = match self
            .call(Method::GET, &format!("/admin/events/{}", attr(d.delivery.event_id.as_str())), None)
            .await
        {
            Ok(event) => Ok(event),
            Err(ApiError(StatusCode::NOT_FOUND, ..)) => Err("The event is no longer stored.".into()),
            Err(ApiError(_, _, message)) => Err(format!("The event could not be read: {message}")),
        };
        let v = &d.delivery;
        let mut items = vec![
            ("State", state(v.state.as_str())),
            ("Endpoint", format!("<a href=\"/ui/deliveries?endpoint={}\">{}</a>", attr(&v.endpoint), esc(&v.endpoint))),
            ("Source", esc(&v.source)),
            ("Type", esc(&v.event_type)),
            ("Event", esc(v.event_id.as_str())),
            ("Attempts", v.attempts.to_string()),
            ("Next attempt", or_dash(v.next_attempt_at.as_deref())),
            ("Last error", or_dash(v.last_error.as_deref())),
            ("Created", esc(&v.created_at)),
            ("Updated", esc(&v.updated_at)),
        ];
        if let Some(reason) = &v.discard_reason {
            items.push(("Discarded because", esc(reason)));
        }
        if let Some(order) = &v.order
            && let [source, kind, subject] = order.subject.splitn(3, '/').collect::<Vec<_>>()[..]
        {
            let link = query(&[("source", source), ("kind", kind), ("id", subject)]);
            items.push((
                "Payment timeline",
                format!(
                    "<a href=\"/ui/subjects?{}\">event {} of {}</a>",
                    esc(&link),
                    order.sequence,
                    esc(&order.subject)
                ),
            ));
        }
        let attempts: Vec<Vec<String>> = d
            .history
            .iter()
            .map(|a| {
                let outcome = match (a.status, &a.error) {
                    (Some(s), _) => format!("HTTP {s}"),
                    (None, Some(e)) => esc(e),
                    (None, None) => "—".into(),
                };
                let excerpt =
                    a.response_excerpt.as_deref().map(|e| format!("<pre>{}</pre>", esc(e))).unwrap_or_default();
                vec![a.number.to_string(), esc(&a.started_at), format!("{} ms", a.duration_ms), outcome, excerpt]
            })
            .collect();
        let mut actions = String::new();
        let replayable = matches!(v.state, DeliveryState::Dead | DeliveryState::Discarded | DeliveryState::Delivered);
        if replayable {
            let (include, label) = match v.state {
                DeliveryState::Delivered => {
                    ("<input type=\"hidden\" name=\"include_delivered\" value=\"true\">", "Send again")
                }
                _ => ("", "Replay"),
            };
            actions.push_str(&format!(
                "<form method=\"post\" action=\"/ui/deliveries/{}/replay\">{}{include}<button type=\"submit\">{label}</button></form>",
                attr(id),
                csrf_field(csrf)
            ));
        }
        if crate::store::discardable(v.state) {
            actions.push_str(&format!(
                "<form method=\"post\" action=\"/ui/deliveries/{}/discard\" class=\"stack\">{}\
                 <label for=\"reason\">Reason for discarding</label><input id=\"reason\" name=\"reason\" required maxlength=\"500\">\
                 <button type=\"submit\">Discard</button></form>",
                attr(id),
                csrf_field(csrf)
            ));
        }
        let payload = match &event {
            Ok(e) => format!(
                "<pre class=\"payload\">{}</pre>",
                esc(&serde_json::to_string_pretty(&e.event).unwrap_or_default())
            ),
            Err(why) => format!("<p>{}</p>", esc(why)),
        };
        let body = format!(
            "{}<section aria-labelledby=\"actions\"><h2 id=\"actions\">Actions</h2>{}</section>{}\
             <section aria-labelledby=\"payload\"><h2 id=\"payload\">Event as delivered</h2>{payload}</section>",
            fields(&items),
            if actions.is_empty() { "<p>None in this state.</p>".to_owned() } else { actions },
            table("Attempts", &["#", "Started", "Duration", "Status or error", "Response excerpt"], &attempts),
        );
        let title = format!("Delivery {id}");
        Ok(Reply::Page(StatusCode::OK, page(&title, "/ui/deliveries", Some(csrf), notice(q), &body)))
    }

    async fn subject_page(&self, q: &Form, csrf: &str) -> Result<Reply, ApiError> {
        let (source, kind, id) = (get(q, "source").trim(), get(q, "kind").trim(), get(q, "id").trim());
        let kind = if kind.is_empty() { "payment" } else { kind };
        let input = |name: &str, label: &str, value: &str| {
            format!(
                "<label for=\"s-{name}\">{label}</label><input id=\"s-{name}\" name=\"{name}\" value=\"{}\" required>",
                esc(value)
            )
        };
        let mut body = format!(
            "<form method=\"get\" action=\"/ui/subjects\" class=\"filters\">{}{}{}<button type=\"submit\">Show</button></form>",
            input("source", "Source", source),
            input("kind", "Kind (payment, payout…)", kind),
            input("id", "Id", id)
        );
        if !source.is_empty() && !id.is_empty() {
            let path = format!("/admin/subjects/{}/{}/{}", attr(source), attr(kind), attr(id));
            let timeline: SubjectView = self.call(Method::GET, &path, None).await?;
            let rows: Vec<Vec<String>> = timeline
                .events
                .iter()
                .map(|e| {
                    let deliveries: Vec<String> = e
                        .deliveries
                        .iter()
                        .map(|d| format!("{} {}", link_delivery(d), state(d.state.as_str())))
                        .collect();
                    vec![
                        e.sequence.to_string(),
                        or_dash(e.received_at.as_deref()),
                        or_dash(e.event_type.as_deref()),
                        format!(
                            "{} → {}{}",
                            or_dash(e.previous_status.as_deref()),
                            or_dash(e.provider_status.as_deref()),
                            if e.regression { " <strong>(regression)</strong>" } else { "" }
                        ),
                        deliveries.join("<br>"),
                    ]
                })
                .collect();
            body.push_str(&table(
                &format!("Timeline of {kind} {id} from {source}"),
                &["#", "Received", "Type", "Status", "Deliveries"],
                &rows,
            ));
        }
        Ok(Reply::Page(StatusCode::OK, page("Payment timeline", "/ui/subjects", Some(csrf), None, &body)))
    }

    async fn quarantine_page(&self, q: &Form, csrf: &str) -> Result<Reply, ApiError> {
        let cursor = get(q, "cursor");
        let path = format!("/admin/quarantine?{}", query(&[("limit", &PAGE_ROWS.to_string()), ("cursor", cursor)]));
        let list: QuarantinePageView = self.call(Method::GET, &path, None).await?;
        let rows: Vec<Vec<String>> = list
            .items
            .iter()
            .map(|i| {
                vec![
                    format!("<a href=\"/ui/quarantine/{}\">{}</a>", attr(&i.id), esc(&i.id)),
                    esc(&i.received_at),
                    esc(&i.source),
                    esc(i.reason.as_str()),
                    short(&i.diagnosis.summary),
                ]
            })
            .collect();
        let mut body = String::from(
            "<p>Callbacks refused for a signature or timestamp, kept so that a configuration mistake loses nothing. \
             Open one to see why and to reverify it.</p>",
        );
        body.push_str(&table("Quarantined callbacks", &["Id", "Received", "Source", "Reason", "Diagnosis"], &rows));
        if let Some(next) = &list.next_cursor {
            body.push_str(&format!(
                "<p><a href=\"/ui/quarantine?{}\" rel=\"next\">Next page</a></p>",
                esc(&query(&[("cursor", next)]))
            ));
        }
        Ok(Reply::Page(StatusCode::OK, page("Quarantine", "/ui/quarantine", Some(csrf), None, &body)))
    }

    async fn quarantine_item_page(&self, id: &str, q: &Form, csrf: &str) -> Result<Reply, ApiError> {
        let item: QuarantineDetail = self.call(Method::GET, &format!("/admin/quarantine/{}", attr(id)), None).await?;
        let i = &item.item;
        let findings: String = i.diagnosis.findings.iter().map(|f| format!("<li>{}</li>", esc(f))).collect();
        let headers: String =
            i.headers.iter().map(|(k, v)| format!("<li><code>{}: {}</code></li>", esc(k), esc(v))).collect();
        let items = [
            ("Source", esc(&i.source)),
            ("Reason", esc(i.reason.as_str())),
            ("Received", esc(&i.received_at)),
            ("Client", esc(&i.client)),
            ("Diagnosis", esc(&i.diagnosis.summary)),
            ("Findings", format!("<ul>{findings}</ul>")),
            ("Signature headers", format!("<ul>{headers}</ul>")),
        ];
        let body_text = match (&item.body, &item.body_base64) {
            (Some(b), _) => format!("<pre class=\"payload\">{}</pre>", esc(b)),
            (None, Some(b)) => format!("<p>Not UTF-8; base64:</p><pre class=\"payload\">{}</pre>", esc(b)),
            (None, None) => "<p>No body kept.</p>".into(),
        };
        let body = format!(
            "{}<form method=\"post\" action=\"/ui/quarantine/reverify\">{}<input type=\"hidden\" name=\"id\" value=\"{}\">\
             <button type=\"submit\">Reverify with the current configuration</button></form>\
             <section aria-labelledby=\"body\"><h2 id=\"body\">Body as received</h2>{body_text}</section>",
            fields(&items),
            csrf_field(csrf),
            esc(id)
        );
        Ok(Reply::Page(
            StatusCode::OK,
            page(&format!("Quarantined {id}"), "/ui/quarantine", Some(csrf), notice(q), &body),
        ))
    }
}

fn deliveries_table(caption: &str, items: &[DeliveryView]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|d| {
            vec![
                link_delivery(d),
                esc(&d.created_at),
                esc(&d.endpoint),
                esc(&d.source),
                esc(&d.event_type),
                state(d.state.as_str()),
                d.attempts.to_string(),
                d.last_error.as_deref().map(short).unwrap_or_else(|| "—".into()),
            ]
        })
        .collect();
    table(caption, &["Delivery", "Created", "Endpoint", "Source", "Type", "State", "Attempts", "Last error"], &rows)
}
