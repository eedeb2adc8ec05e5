//! Bulk replay in the console: the filter, the counted confirmation, the
//! job's progress and the way on from a job that stopped at its maximum.

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::html::{attr, csrf_field, esc, fields, page, query};
use super::pages::filter_pairs;
use super::{Form, Reply, get};
use crate::admin::api::ReplayJobView;
use crate::admin::overview::ReplayPreview;
use crate::admin::params::parse_time;
use crate::admin::{Admin, ApiError};

impl Admin {
    /// `POST /ui/replay`: replays what the confirmed form selects.
    pub(super) async fn replay_action(&self, form: &Form) -> Result<String, ApiError> {
        let mut body: serde_json::Map<String, Value> =
            filter_pairs(form).into_iter().map(|(k, v)| (k.to_owned(), json!(v))).collect();
        if !get(form, "cursor").is_empty() {
            body.insert("cursor".into(), json!(get(form, "cursor")));
        }
        match get(form, "max").parse::<u64>() {
            Ok(max) => {
                body.insert("max".into(), json!(max));
                let r: Result<ReplayJobView, _> =
                    self.call(Method::POST, "/admin/replay", Some(Value::Object(body))).await;
                r.map(|job| format!("/ui/replays/{}", attr(&job.job)))
            }
            Err(_) => Err(ApiError::bad("max: expected a whole number")),
        }
    }

    /// Bulk replay: the filter form, then (with `preview`) how many the
    /// filter selects and the button that replays them.
    pub(super) async fn replay_page(&self, q: &Form, csrf: &str) -> Result<Reply, ApiError> {
        let mut body = String::from(
            "<p>Choose which deliveries to replay: dead ones unless you pick another state (discarded, or delivered to send again).</p>",
        );
        let mut q = q.clone();
        if get(&q, "state").is_empty() {
            q.push(("state".into(), "dead".into()));
        }
        // Counting again on a continuation keeps its place.
        let cursor = get(&q, "cursor").trim().to_owned();
        let keep = match cursor.is_empty() {
            true => String::new(),
            false => format!("<input type=\"hidden\" name=\"cursor\" value=\"{}\">", esc(&cursor)),
        };
        body.push_str(
            &self
                .filter_form(&q, "/ui/replay", "Count them", false)
                .replace("</form>", &format!("<input type=\"hidden\" name=\"preview\" value=\"1\">{keep}</form>")),
        );
        if !cursor.is_empty() {
            body.push_str(
                "<p>Continuing where the last job stopped. <a href=\"/ui/replay\">Start over from the newest</a></p>",
            );
        }
        if get(&q, "preview") == "1" {
            // Relative times ("24h") become absolute now, so the replay
            // selects the window that was counted, not one that moved.
            let now = crate::store::now_millis();
            let mut pinned: Vec<(&str, String)> = filter_pairs(&q)
                .into_iter()
                .map(|(k, v)| match k {
                    "since" | "until" => {
                        (k, parse_time(k, v, now).map(crate::admin::api::time).unwrap_or_else(|_| v.to_owned()))
                    }
                    _ => (k, v.to_owned()),
                })
                .collect();
            // And the top of the window is now: what was created after the
            // count is not replayed in place of what was counted.
            if !pinned.iter().any(|(k, _)| *k == "until") {
                pinned.push(("until", crate::admin::api::time(now + 1)));
            }
            let cursor = cursor.as_str();
            let mut request: serde_json::Map<String, Value> =
                pinned.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
            if !cursor.is_empty() {
                request.insert("cursor".into(), json!(cursor));
            }
            request.insert("dry_run".into(), json!(true));
            request.insert("max".into(), json!(super::super::MAX_REPLAY_MAX));
            let preview: ReplayPreview = self.call(Method::POST, "/admin/replay", Some(Value::Object(request))).await?;
            let mut hidden: String = pinned
                .iter()
                .map(|(k, v)| format!("<input type=\"hidden\" name=\"{k}\" value=\"{}\">", esc(v)))
                .collect();
            if !cursor.is_empty() {
                hidden.push_str(&format!("<input type=\"hidden\" name=\"cursor\" value=\"{}\">", esc(cursor)));
            }
            let mut described: Vec<String> = pinned.iter().map(|(k, v)| format!("{k} = {}", esc(v))).collect();
            if !cursor.is_empty() {
                described.push("older than the last job reached".into());
            }
            let qualifier = match (preview.truncated, preview.counted_all) {
                (true, _) => " or more (one replay takes at most this many; the job page offers the rest)",
                (false, false) => {
                    " at least (the count stopped after part of the store; the replay takes no more than this)"
                }
                (false, true) => "",
            };
            body.push_str(&format!(
                "<section aria-labelledby=\"confirm\"><h2 id=\"confirm\">Confirm</h2>\
                 <p><strong id=\"matching\">{} deliveries</strong>{qualifier} match {}. The replay takes the newest \
                 of those matching when you confirm, up to this many.</p>",
                preview.matching,
                described.join(", ")
            ));
            if preview.matching > 0 {
                body.push_str(&format!(
                    "<form method=\"post\" action=\"/ui/replay\">{}{hidden}<input type=\"hidden\" name=\"max\" value=\"{}\">\
                     <button type=\"submit\">Replay up to {} deliveries</button></form>",
                    csrf_field(csrf),
                    preview.matching,
                    preview.matching
                ));
            }
            body.push_str("</section>");
        }
        Ok(Reply::Page(StatusCode::OK, page("Bulk replay", "/ui/replay", Some(csrf), None, &body)))
    }

    pub(super) async fn replay_job_page(&self, id: &str, csrf: &str) -> Result<Reply, ApiError> {
        let job: ReplayJobView = self.call(Method::GET, &format!("/admin/replays/{}", attr(id)), None).await?;
        let items = [
            ("Finished", if job.finished { "yes" } else { "not yet; reload the page" }.to_owned()),
            ("Considered", job.considered.to_string()),
            ("Replayed", job.replayed.to_string()),
            ("Skipped", job.skipped.to_string()),
            ("Gone", job.not_found.to_string()),
            ("Endpoint not configured", job.not_configured.to_string()),
            ("Started", esc(&job.created_at)),
        ];
        let mut body = fields(&items);
        if let (true, Some(cursor)) = (job.truncated, &job.continue_cursor) {
            let f = &job.filter;
            let state = f.state.map(|s| s.as_str()).unwrap_or_default();
            let pairs = [
                ("state", state),
                ("source", f.source.as_deref().unwrap_or_default()),
                ("endpoint", f.endpoint.as_deref().unwrap_or_default()),
                ("type", f.event_type.as_deref().unwrap_or_default()),
                ("since", f.since.as_deref().unwrap_or_default()),
                ("until", f.until.as_deref().unwrap_or_default()),
                ("cursor", cursor.as_str()),
                ("preview", "1"),
            ];
            body.push_str(&format!(
                "<p>More deliveries matched than this job took. <a href=\"/ui/replay?{}\">Count and replay the next ones</a> \
                 (older than the last this job reached).</p>",
                esc(&query(&pairs))
            ));
        }
        body.push_str("<p><a href=\"/ui/deliveries?state=pending\">See pending deliveries</a></p>");
        Ok(Reply::Page(StatusCode::OK, page(&format!("Replay job {id}"), "/ui/replay", Some(csrf), None, &body)))
    }
}
