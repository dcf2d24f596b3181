//! The dashboard's files, embedded in the binary.

/// `/`.
pub(crate) const INDEX: &str = include_str!("../web/index.html");
/// `/app.js`.
pub(crate) const APP_JS: &str = include_str!("../web/app.js");
/// `/style.css`.
pub(crate) const STYLE: &str = include_str!("../web/style.css");
