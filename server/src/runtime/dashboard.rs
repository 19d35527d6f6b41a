//! The live map's static files, compiled into the binary: no build step, nothing to install.
//! The page polls `/api/cluster`; `server/assets/dashboard/` holds the sources.

pub const INDEX_HTML: &str = include_str!("../../assets/dashboard/index.html");
pub const APP_JS: &str = include_str!("../../assets/dashboard/app.js");
pub const STYLE_CSS: &str = include_str!("../../assets/dashboard/style.css");
