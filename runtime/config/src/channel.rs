//! Channel patterns (`room:{id}`, `user:{sub}`, `team:{claim:teams}:chat`)
//! as validated values: a [`ChannelPattern`] exists only if its text parsed.
//! Matching a channel against a principal is the server's (authz).

/// One piece of a channel pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    /// Text that must appear as it is.
    Literal(String),
    /// `{sub}`: the principal's subject.
    Subject,
    /// `{claim:NAME}`: a value of the named claim.
    Claim(String),
    /// `{name}`: any one segment.
    Any,
}

/// A parsed channel pattern such as `room:{id}` or `user:{sub}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelPattern {
    parts: Vec<Part>,
}

impl ChannelPattern {
    /// Parse a pattern; placeholders must be separated by literal text.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = pattern;
        if pattern.is_empty() {
            return Err("empty channel pattern".into());
        }
        while !rest.is_empty() {
            match rest.find('{') {
                Some(0) => {
                    let end = rest
                        .find('}')
                        .ok_or_else(|| format!("pattern {pattern:?}: unclosed {{"))?;
                    let name = &rest[1..end];
                    let part = if name == "sub" {
                        Part::Subject
                    } else if let Some(claim) = name.strip_prefix("claim:") {
                        if claim.is_empty() {
                            return Err(format!("pattern {pattern:?}: empty claim name"));
                        }
                        Part::Claim(claim.to_owned())
                    } else if !name.is_empty()
                        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    {
                        Part::Any
                    } else {
                        return Err(format!("pattern {pattern:?}: bad placeholder {{{name}}}"));
                    };
                    if parts.last().is_some_and(|p| !matches!(p, Part::Literal(_))) {
                        return Err(format!(
                            "pattern {pattern:?}: placeholders must be separated by text"
                        ));
                    }
                    parts.push(part);
                    rest = &rest[end + 1..];
                }
                Some(i) => {
                    parts.push(Part::Literal(rest[..i].to_owned()));
                    rest = &rest[i..];
                }
                None => {
                    parts.push(Part::Literal(rest.to_owned()));
                    rest = "";
                }
            }
        }
        for p in &parts {
            if let Part::Literal(l) = p
                && (l.contains('}') || !sluice_protocol::is_valid_channel(l))
            {
                return Err(format!(
                    "pattern {pattern:?}: {l:?} is not valid channel text"
                ));
            }
        }
        Ok(Self { parts })
    }

    /// The pattern's parts, in order.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }
}
