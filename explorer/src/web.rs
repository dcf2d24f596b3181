//! The web UI's files (explorer/web/static), embedded at build time by build.rs.

include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// The content type and bytes of `path` (relative to web/static), if it is one of the files.
pub(crate) fn get(path: &str) -> Option<(&'static str, &'static [u8])> {
    let path = path.trim_start_matches('/');
    let (_, bytes) = ASSETS.iter().find(|(p, _)| *p == path)?;
    let ext = path.rsplit('.').next().unwrap_or("");
    let content_type = match ext {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "png" => "image/png",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    };
    Some((content_type, bytes))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_index_is_embedded() {
        let (ct, body) = super::get("index.html").expect("web/static/index.html");
        assert!(ct.starts_with("text/html"));
        assert!(!body.is_empty());
        assert!(super::get("../Cargo.toml").is_none());
        assert!(super::get("nope.js").is_none());
    }
}
