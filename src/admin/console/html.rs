//! HTML for the console: escaping and the page around every view. Every
//! value from the store or the request goes through [`esc`] (or [`attr`]
//! for a URL's query value); nothing else builds markup from data.

use std::fmt::Write as _;

/// `s` with `& < > " '` escaped, for text and quoted attribute values.
pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// What [`attr`] leaves as it is: RFC 3986's unreserved characters.
const UNRESERVED: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// `s` percent-encoded for a path segment or a query value, then escaped.
pub(super) fn attr(s: &str) -> String {
    esc(&percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string())
}

/// A query string from `pairs`, leaving out empty values.
pub(super) fn query(pairs: &[(&str, &str)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        q.append_pair(k, v);
    }
    q.finish()
}

/// The navigation: (path, label).
const NAV: [(&str, &str); 5] = [
    ("/ui/", "Overview"),
    ("/ui/deliveries", "Deliveries"),
    ("/ui/replay", "Bulk replay"),
    ("/ui/subjects", "Payment timeline"),
    ("/ui/quarantine", "Quarantine"),
];

/// A whole page: `title`, the navigation with `current` marked (signed in
/// with `csrf`), an optional notice, and `body`.
pub(super) fn page(title: &str, current: &str, csrf: Option<&str>, notice: Option<&str>, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 2048);
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · ipn-relay</title><link rel=\"stylesheet\" href=\"/ui/style.css\"></head><body>\
         <a class=\"skip\" href=\"#main\">Skip to content</a><header><span class=\"brand\">ipn-relay</span>",
        esc(title)
    );
    if let Some(csrf) = csrf {
        out.push_str("<nav aria-label=\"Main\"><ul>");
        for (path, label) in NAV {
            let here = if path == current { " aria-current=\"page\"" } else { "" };
            let _ = write!(out, "<li><a href=\"{path}\"{here}>{label}</a></li>");
        }
        let _ = write!(
            out,
            "</ul></nav><form method=\"post\" action=\"/ui/logout\" class=\"signout\">{}<button type=\"submit\">Sign out</button></form>",
            csrf_field(csrf)
        );
    }
    let _ = write!(out, "</header><main id=\"main\"><h1>{}</h1>", esc(title));
    if let Some(notice) = notice {
        let _ = write!(out, "<p class=\"notice\" role=\"status\">{}</p>", esc(notice));
    }
    out.push_str(body);
    out.push_str("</main></body></html>\n");
    out
}

/// The hidden field every state-changing form carries.
pub(super) fn csrf_field(csrf: &str) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(csrf))
}

/// A table: a caption, column headings and rows of ready markup.
pub(super) fn table(caption: &str, headings: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("<table><caption>{}</caption><thead><tr>", esc(caption));
    for h in headings {
        let _ = write!(out, "<th scope=\"col\">{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    if rows.is_empty() {
        let _ = write!(out, "<tr><td colspan=\"{}\">None.</td></tr>", headings.len());
    }
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// A definition list of (term, ready markup).
pub(super) fn fields(items: &[(&str, String)]) -> String {
    let mut out = String::from("<dl>");
    for (term, value) in items {
        let _ = write!(out, "<dt>{}</dt><dd>{value}</dd>", esc(term));
    }
    out.push_str("</dl>");
    out
}

/// A delivery state as text with a marker class; the word carries the
/// meaning, the colour only repeats it.
pub(super) fn state(s: &str) -> String {
    format!("<span class=\"state state-{0}\">{0}</span>", esc(s))
}

/// An optional value, or a dash.
pub(super) fn or_dash(v: Option<&str>) -> String {
    v.map(esc).unwrap_or_else(|| "—".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_and_quotes_in_data_are_escaped() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(attr("dlv_0a-1.b~ c/\"d"), "dlv_0a-1.b~%20c%2F%22d");
        let p = page("<t>", "/ui/", Some("tok\"en"), Some("<n>"), "");
        assert!(p.contains("<title>&lt;t&gt; · ipn-relay</title>"), "{p}");
        assert!(p.contains("value=\"tok&quot;en\""), "{p}");
        assert!(p.contains("&lt;n&gt;"), "{p}");
        assert_eq!(query(&[("state", "dead"), ("source", ""), ("type", "a&b")]), "state=dead&type=a%26b");
    }
}
