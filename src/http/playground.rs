//! `GET /` and `/playground`: a self-contained page (src/http/playground.html, compiled into the
//! binary; no external assets) that sends images to any endpoint and draws what came back.

use actix_web::HttpResponse;
use actix_web::http::header;

const PAGE: &str = include_str!("playground.html");

pub async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_no_external_assets_and_offers_every_endpoint() {
        for external in ["http://", "https://", "//cdn", "<link "] {
            assert!(!PAGE.contains(external), "{external}");
        }
        for endpoint in [
            "objects/detect",
            "persons/recognize",
            "persons/set",
            "text/recognize",
            "scene_text/recognize",
            "photo/improve",
        ] {
            assert!(PAGE.contains(&format!("<option value=\"{endpoint}\">")), "{endpoint}");
        }
    }
}
