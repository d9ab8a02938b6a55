//! Plex: what a feed asks (`GET /library/onDeck` with `X-Plex-Token`, JSON through
//! `Accept: application/json`) and the answer's shape
//! (`MediaContainer.Metadata[].Media[].Part[].file`).

use serde::Deserialize;

use super::Ask;

/// The requests of one round.
pub fn asks() -> Vec<Ask> {
    vec![Ask {
        path: "/library/onDeck".into(),
        query: Vec::new(),
        what: "On Deck",
        why: "on deck",
        parse: on_deck_files,
    }]
}

/// The headers that sign a request in and ask for JSON.
pub fn headers(token: &str) -> Vec<(&'static str, String)> {
    vec![
        ("X-Plex-Token", token.to_string()),
        ("Accept", "application/json".into()),
    ]
}

#[derive(Deserialize)]
struct OnDeck {
    #[serde(rename = "MediaContainer")]
    container: Container,
}

#[derive(Deserialize)]
struct Container {
    // Plex leaves the key out when On Deck is empty.
    #[serde(rename = "Metadata", default)]
    metadata: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    #[serde(rename = "Media", default)]
    media: Vec<Media>,
}

#[derive(Deserialize)]
struct Media {
    #[serde(rename = "Part", default)]
    parts: Vec<Part>,
}

#[derive(Deserialize)]
struct Part {
    file: Option<String>,
}

/// Every part's file of an On Deck answer, in the answer's order (a film in two parts, or
/// in two versions, gives each).
pub fn on_deck_files(body: &[u8]) -> Result<Vec<String>, String> {
    let deck: OnDeck = serde_json::from_slice(body)
        .map_err(|e| format!("not an On Deck answer (JSON with MediaContainer.Metadata): {e}"))?;
    Ok(deck
        .container
        .metadata
        .into_iter()
        .flat_map(|i| i.media)
        .flat_map(|m| m.parts)
        .filter_map(|p| p.file)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_in_order() {
        // Trimmed from a real answer: the keys that matter, and some that do not.
        let body = br#"{"MediaContainer":{"size":2,"allowSync":false,"identifier":"com.plexapp.plugins.library","mediaTagPrefix":"/system/bundle/media/flags/","Metadata":[
            {"ratingKey":"101","type":"episode","title":"Two","grandparentTitle":"Show","index":2,"parentIndex":1,"viewOffset":61000,
             "Media":[{"id":7,"duration":1500000,"container":"mkv","Part":[{"id":9,"key":"/library/parts/9/1/file.mkv","duration":1500000,"file":"/data/tv/Show/Season 1/Show - S01E02.mkv","size":734003200,"container":"mkv"}]}]},
            {"ratingKey":"202","type":"movie","title":"Film","Media":[
                {"id":8,"Part":[{"id":10,"file":"/data/movies/Film (2020)/Film - cd1.avi"},{"id":11,"file":"/data/movies/Film (2020)/Film - cd2.avi"}]},
                {"id":12,"Part":[{"id":13}]}]},
            {"ratingKey":"303","type":"clip","title":"No media"}
        ]}}"#;
        assert_eq!(
            on_deck_files(body).unwrap(),
            [
                "/data/tv/Show/Season 1/Show - S01E02.mkv",
                "/data/movies/Film (2020)/Film - cd1.avi",
                "/data/movies/Film (2020)/Film - cd2.avi",
            ]
        );
        assert!(
            on_deck_files(br#"{"MediaContainer":{"size":0}}"#)
                .unwrap()
                .is_empty()
        );
        for bad in [
            &br#"<?xml version="1.0"?><MediaContainer size="0"/>"#[..],
            br#"{"Items":[]}"#,
            br#"{"MediaContainer":{"Metadata":{}}}"#,
        ] {
            let e = on_deck_files(bad).unwrap_err();
            assert!(e.contains("not an On Deck answer"), "{e}");
        }
    }
}
