//! Just enough XML to read Plex's answers: the tags of a document in order
//! ([`tags`]), one attribute of a tag with its entities decoded ([`Tag::attr`]), nesting
//! checked. Plex answers XML unless it honours `Accept: application/json`, and this build
//! carries no XML crate for one list: a hand reader of well-formed documents, which
//! refuses what it does not understand rather than guess.
//!
//! Skipped: the declaration (`<?xml ...?>`) and processing instructions, comments,
//! `<!DOCTYPE ...>` (with an internal subset), CDATA sections, and all text between tags.
//! An attribute's value has the five predefined entities and character references
//! (`&#38;`, `&#x26;`) decoded, and its literal tabs and line breaks read as spaces, as
//! XML's attribute-value normalization says.

/// What a tag does to the nesting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `<Video ...>`
    Open,
    /// `</Video>`
    Close,
    /// `<Part ... />`
    Empty,
}

/// One tag: its kind, its name, and its attributes as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag<'a> {
    pub kind: Kind,
    pub name: &'a str,
    attrs: &'a str,
}

/// The tags of `doc` in order, each checked to close the element it should; an error ends
/// the walk (a document cut short is one).
pub fn tags(doc: &str) -> Tags<'_> {
    Tags {
        doc,
        pos: 0,
        open: Vec::new(),
        failed: false,
    }
}

/// The walk [`tags`] returns.
pub struct Tags<'a> {
    doc: &'a str,
    pos: usize,
    /// The names of the elements open here, outermost first.
    open: Vec<&'a str>,
    failed: bool,
}

impl<'a> Tags<'a> {
    /// How many elements enclose the next tag (0: the next is the root, or after it).
    pub fn depth(&self) -> usize {
        self.open.len()
    }

    /// The end of what starts at `from` and ends with `end`, or an error naming `what`.
    fn skip_past(&self, from: usize, end: &str, what: &str) -> Result<usize, String> {
        self.doc[from..]
            .find(end)
            .map(|i| from + i + end.len())
            .ok_or_else(|| format!("{what} at byte {from} is not closed"))
    }

    /// The index of the first `>` at or after `from` outside quotes (and, with
    /// `brackets`, outside `[...]`).
    fn tag_end(&self, from: usize, brackets: bool) -> Result<usize, String> {
        let mut quote = None;
        let mut depth = 0usize;
        for (i, c) in self.doc[from..].bytes().enumerate() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, b'"' | b'\'') => quote = Some(c),
                (None, b'[') if brackets => depth += 1,
                (None, b']') if brackets => depth = depth.saturating_sub(1),
                (None, b'>') if depth == 0 => return Ok(from + i),
                _ => {}
            }
        }
        Err(format!("the tag at byte {from} is not closed"))
    }

    fn next_tag(&mut self) -> Result<Option<Tag<'a>>, String> {
        loop {
            let Some(lt) = self.doc[self.pos..].find('<').map(|i| self.pos + i) else {
                return match self.open.last() {
                    Some(name) => Err(format!("it ends inside <{name}>: the answer was cut short")),
                    None => Ok(None),
                };
            };
            let rest = &self.doc[lt..];
            if rest.starts_with("<!--") {
                self.pos = self.skip_past(lt, "-->", "a comment")?;
            } else if rest.starts_with("<![CDATA[") {
                self.pos = self.skip_past(lt, "]]>", "a CDATA section")?;
            } else if rest.starts_with("<?") {
                self.pos = self.skip_past(lt, "?>", "a processing instruction")?;
            } else if rest.starts_with("<!") {
                self.pos = self.tag_end(lt, true)? + 1;
            } else {
                return self.element_tag(lt).map(Some);
            }
        }
    }

    /// The tag that starts at `lt` (a `<` that starts no comment or declaration).
    fn element_tag(&mut self, lt: usize) -> Result<Tag<'a>, String> {
        let doc = self.doc;
        let gt = self.tag_end(lt, false)?;
        self.pos = gt + 1;
        let inner = &doc[lt + 1..gt];
        if let Some(name) = inner.strip_prefix('/') {
            let name = name.trim_end();
            return match self.open.pop() {
                Some(open) if open == name => Ok(Tag {
                    kind: Kind::Close,
                    name,
                    attrs: "",
                }),
                Some(open) => Err(format!("</{name}> closes <{open}>")),
                None => Err(format!("</{name}> closes nothing")),
            };
        }
        let (inner, kind) = match inner.strip_suffix('/') {
            Some(i) => (i, Kind::Empty),
            None => (inner, Kind::Open),
        };
        let end = inner
            .find(|c: char| c.is_ascii_whitespace())
            .unwrap_or(inner.len());
        let name = &inner[..end];
        if name.is_empty() || name.contains(['<', '"', '\'', '=']) {
            return Err(format!("a '<' at byte {lt} starts no tag"));
        }
        if kind == Kind::Open {
            self.open.push(name);
        }
        Ok(Tag {
            kind,
            name,
            attrs: &inner[end..],
        })
    }
}

impl<'a> Iterator for Tags<'a> {
    type Item = Result<Tag<'a>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let next = self.next_tag().transpose();
        self.failed = matches!(next, Some(Err(_)));
        next
    }
}

impl Tag<'_> {
    /// The value of the attribute `name`, decoded; `None` if the tag has none. An
    /// attribute written wrong, or an entity this reader does not know, is an error.
    pub fn attr(&self, name: &str) -> Result<Option<String>, String> {
        let mut rest = self.attrs;
        loop {
            rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace());
            if rest.is_empty() {
                return Ok(None);
            }
            let bad = || format!("<{} ...> has an attribute written wrong", self.name);
            let eq = rest.find('=').ok_or_else(bad)?;
            let key = rest[..eq].trim_end();
            if key.is_empty() || key.contains(|c: char| c.is_ascii_whitespace()) {
                return Err(bad());
            }
            let after = rest[eq + 1..].trim_start_matches(|c: char| c.is_ascii_whitespace());
            let quote = after.chars().next().filter(|&c| c == '"' || c == '\'');
            let quote = quote.ok_or_else(bad)?;
            let close = after[1..].find(quote).ok_or_else(bad)?;
            if key == name {
                return decode(&after[1..1 + close]).map(Some);
            }
            rest = &after[close + 2..];
        }
    }
}

/// An attribute's value as written to the text it stands for.
pub fn decode(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(amp) = rest.find(['&', '\t', '\n', '\r']) {
        out.push_str(&rest[..amp]);
        if rest.as_bytes()[amp] != b'&' {
            out.push(' ');
            rest = &rest[amp + 1..];
            continue;
        }
        let semi = rest[amp..]
            .find(';')
            .filter(|&i| i <= 12)
            .ok_or_else(|| format!("a '&' that starts no entity in \"{raw}\""))?;
        let entity = &rest[amp + 1..amp + semi];
        out.push(match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = match entity.strip_prefix('#') {
                    Some(hex) if hex.starts_with(['x', 'X']) => u32::from_str_radix(&hex[1..], 16),
                    Some(dec) => dec.parse::<u32>(),
                    None => return Err(format!("unknown entity &{entity}; in \"{raw}\"")),
                };
                code.ok()
                    .filter(|&c| c != 0)
                    .and_then(char::from_u32)
                    .ok_or_else(|| format!("&{entity}; is no character, in \"{raw}\""))?
            }
        });
        rest = &rest[amp + semi + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(doc: &str) -> Result<Vec<(Kind, String, usize)>, String> {
        let mut t = tags(doc);
        let mut out = Vec::new();
        while let Some(tag) = {
            let depth = t.depth();
            t.next()
                .map(|r| r.map(|tag| (tag.kind, tag.name.to_string(), depth)))
        } {
            out.push(tag?);
        }
        Ok(out)
    }

    #[test]
    fn tags_in_order_with_their_depth() {
        let doc = "\u{feff}<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
            <!DOCTYPE MediaContainer [<!ENTITY x \"<not a tag>\">]>\n\
            <!-- a comment with <Video> in it -->\
            <MediaContainer size=\"1\">text<![CDATA[<Part file=\"/no\"/>]]>\
            <Video a='1>2' b=\"it's\"><Media>\n<Part file=\"/x\"/></Media></Video >\
            </MediaContainer>\n";
        use Kind::*;
        assert_eq!(
            walk(doc).unwrap(),
            [
                (Open, "MediaContainer".into(), 0),
                (Open, "Video".into(), 1),
                (Open, "Media".into(), 2),
                (Empty, "Part".into(), 3),
                (Close, "Media".into(), 3),
                (Close, "Video".into(), 2),
                (Close, "MediaContainer".into(), 1),
            ]
        );
    }

    #[test]
    fn broken_documents_are_errors_not_guesses() {
        for (doc, says) in [
            ("<A><B></A>", "</A> closes <B>"),
            ("<A></B>", "</B> closes <A>"),
            ("</A>", "closes nothing"),
            ("<A><B>", "cut short"),
            ("<A b=\"1>", "not closed"),
            ("<A><!-- x", "comment at byte 3 is not closed"),
            ("<A><![CDATA[ x", "CDATA"),
            ("<A>< B/></A>", "starts no tag"),
            ("<A><=x/></A>", "starts no tag"),
            ("<?xml", "processing instruction"),
        ] {
            let e = walk(doc).unwrap_err();
            assert!(e.contains(says), "{doc}: {e}");
        }
        // After an error the walk ends.
        let mut t = tags("</A><B/>");
        assert!(t.next().unwrap().is_err());
        assert!(t.next().is_none());
        assert_eq!(walk("").unwrap(), []);
        assert_eq!(walk("just text").unwrap(), []);
    }

    fn first(doc: &str) -> Tag<'_> {
        tags(doc).next().unwrap().unwrap()
    }

    #[test]
    fn attributes_decoded() {
        let t = first(
            "<Part id=\"9\" key = '/library/parts/9' file=\"/tv/Tom &amp; Jerry/&lt;1&gt; &quot;x&quot; &apos;y&apos; &#38;&#x26;&#X263a;\tz.mkv\" e=\"\"/>",
        );
        assert_eq!(t.kind, Kind::Empty);
        assert_eq!(t.attr("id").unwrap().as_deref(), Some("9"));
        assert_eq!(t.attr("key").unwrap().as_deref(), Some("/library/parts/9"));
        assert_eq!(
            t.attr("file").unwrap().as_deref(),
            Some("/tv/Tom & Jerry/<1> \"x\" 'y' &&\u{263a} z.mkv")
        );
        assert_eq!(t.attr("e").unwrap().as_deref(), Some(""));
        assert_eq!(t.attr("fil").unwrap(), None);
        assert_eq!(t.attr("ile").unwrap(), None);
        // A name inside another's value is not an attribute.
        let t = first("<P a=\"file=x\"/>");
        assert_eq!(t.attr("file").unwrap(), None);
        // Non-ASCII as written, and a character reference beyond the BMP.
        let t = first("<P file=\"/媒体/Ça/&#128512;.mkv\" />");
        assert_eq!(t.attr("file").unwrap().as_deref(), Some("/媒体/Ça/😀.mkv"));
    }

    #[test]
    fn odd_attributes_are_errors() {
        for (tag, says) in [
            ("<P file=\"a &nbsp; b\"/>", "unknown entity &nbsp;"),
            ("<P file=\"a & b\"/>", "starts no entity"),
            ("<P file=\"a &amp b\"/>", "starts no entity"),
            ("<P file=\"&#0;\"/>", "no character"),
            ("<P file=\"&#xD800;\"/>", "no character"),
            ("<P file=\"&#x110000;\"/>", "no character"),
            ("<P file=\"&#12a;\"/>", "no character"),
            ("<P file=\"&#;\"/>", "no character"),
            ("<P file=x/>", "written wrong"),
            ("<P file/>", "written wrong"),
            ("<P x=\"1\" file/>", "written wrong"),
            ("<P file x=\"1\"/>", "written wrong"),
            ("<P =\"1\"/>", "written wrong"),
        ] {
            let e = first(tag).attr("file").unwrap_err();
            assert!(e.contains(says), "{tag}: {e}");
        }
    }

    #[test]
    fn any_input_ends_without_panicking() {
        // Every prefix and a few mutations of a real answer: an answer cut anywhere, or
        // bytes dropped, is an error or fewer tags, never a panic or a hang.
        let doc = "<?xml version=\"1.0\"?><MediaContainer size=\"1\" totalSize=\"3\">\
            <Video title=\"Tom &amp; Jerry\"><Media><Part file=\"/a/&#x263a;.mkv\"/></Media>\
            </Video><!-- c --></MediaContainer>";
        let bounds: Vec<usize> = doc
            .char_indices()
            .map(|(i, _)| i)
            .chain([doc.len()])
            .collect();
        for w in bounds.windows(2) {
            let (i, j) = (w[0], w[1]);
            for variant in [doc[..i].to_string(), format!("{}{}", &doc[..i], &doc[j..])] {
                for tag in tags(&variant).flatten() {
                    let _ = tag.attr("file");
                    let _ = tag.attr("title");
                }
            }
        }
        let mut seed = 0x2545_f491_u32;
        let alphabet = [
            '<', '>', '/', '"', '\'', '=', '&', ';', '#', 'x', 'a', ' ', '!', '-', '?', '[', ']',
        ];
        for _ in 0..20_000 {
            let s: String = (0..24)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    alphabet[seed as usize % alphabet.len()]
                })
                .collect();
            for tag in tags(&s).flatten() {
                let _ = tag.attr("a");
            }
            let _ = decode(&s);
        }
    }
}
