//! Subjects and subscription patterns.
//!
//! Starling follows the NATS conventions because users already know them:
//!
//! - a subject is a list of tokens separated by `.`: `orders.eu.created`;
//! - a token is non-empty and holds no whitespace or control characters;
//! - in a *pattern*, `*` matches exactly one token and `>` matches one or more
//!   trailing tokens; `>` may only stand last, so `orders.>` does not match
//!   `orders`;
//! - a wildcard is a whole token: `ord*` is refused rather than read as a literal,
//!   because a literal `*` inside a token is almost always a mistake;
//! - a *published* subject has no wildcards.
//!
//! Validation never panics. Every error names the rule that was broken and the
//! token where it was broken, so that a client can be told exactly what is wrong.

use thiserror::Error;

/// Separates the tokens of a subject.
pub const TOKEN_SEPARATOR: u8 = b'.';
/// Matches exactly one token.
pub const SINGLE_WILDCARD: &str = "*";
/// Matches one or more trailing tokens.
pub const FULL_WILDCARD: &str = ">";
/// Prefix of the reply subjects the bus makes for requests.
pub const INBOX_PREFIX: &str = "_INBOX.";
/// Prefix of the subjects on which the mesh publishes its own events.
pub const SYSTEM_PREFIX: &str = "$SYS.";

/// Size limits applied to subjects and patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubjectLimits {
    /// Longest subject or pattern, in bytes.
    pub bytes_max: usize,
    /// Most tokens in a subject or pattern.
    pub tokens_max: usize,
}

impl Default for SubjectLimits {
    fn default() -> Self {
        Self {
            bytes_max: 256,
            tokens_max: 32,
        }
    }
}

/// Why a subject or pattern was refused. Refusing one changes no state.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SubjectError {
    /// The subject has no bytes at all.
    #[error("the subject is empty")]
    Empty,
    /// The subject is longer than [`SubjectLimits::bytes_max`].
    #[error("the subject is {len} bytes long; the limit is {max} bytes")]
    TooLong {
        /// Length of the subject in bytes.
        len: usize,
        /// The limit it broke.
        max: usize,
    },
    /// The subject has more tokens than [`SubjectLimits::tokens_max`].
    #[error("the subject has more than {max} tokens")]
    TooManyTokens {
        /// The limit it broke.
        max: usize,
    },
    /// Two dots in a row, or a dot at the start or the end.
    #[error("token {index} is empty: a subject may not start or end with '.' or contain '..'")]
    EmptyToken {
        /// Zero-based index of the empty token.
        index: usize,
    },
    /// A token holds a space, a tab, a line break, another control character,
    /// or an invisible formatting character (zero-width or bidirectional).
    #[error(
        "token {index} contains whitespace, a control character or an invisible formatting character (zero-width, bidi)"
    )]
    InvalidCharacter {
        /// Zero-based index of the token.
        index: usize,
    },
    /// `*` or `>` appears inside a longer token, such as `ord*`.
    #[error("token {index} mixes a wildcard with other characters; '*' and '>' must stand alone")]
    PartialWildcard {
        /// Zero-based index of the token.
        index: usize,
    },
    /// `>` appears before the last token.
    #[error("'>' may only be the last token, but it is token {index}")]
    FullWildcardNotLast {
        /// Zero-based index of the `>` token.
        index: usize,
    },
    /// A subject given to `publish` contains `*` or `>`.
    #[error("a published subject may not contain wildcards, but token {index} is '{wildcard}'")]
    WildcardInSubject {
        /// Zero-based index of the wildcard token.
        index: usize,
        /// The wildcard found.
        wildcard: char,
    },
}

/// Checks a subject that events are published on: no wildcards allowed.
pub fn validate_subject(subject: &str, limits: &SubjectLimits) -> Result<(), SubjectError> {
    validate(subject, limits, Kind::Subject).map(|_| ())
}

/// Checks a subscription pattern: `*` and a final `>` allowed.
///
/// Returns the number of tokens, which the subscription index needs anyway.
pub fn validate_pattern(pattern: &str, limits: &SubjectLimits) -> Result<usize, SubjectError> {
    validate(pattern, limits, Kind::Pattern)
}

/// True if the pattern has a wildcard token.
pub fn has_wildcard(pattern: &str) -> bool {
    tokens(pattern).any(|token| token == SINGLE_WILDCARD || token == FULL_WILDCARD)
}

/// The tokens of a subject or pattern, in order.
pub fn tokens(subject: &str) -> impl Iterator<Item = &str> + Clone {
    subject.split('.')
}

/// The reference matcher: does `pattern` match the published `subject`?
///
/// Both arguments are assumed valid. This is the simple, obviously correct
/// definition that the subscription index is tested against; the index is what
/// the data path uses.
pub fn pattern_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = tokens(subject);
    for pattern_token in tokens(pattern) {
        match pattern_token {
            // `>` needs at least one more token, and takes all that are left.
            FULL_WILDCARD => return subject_tokens.next().is_some(),
            SINGLE_WILDCARD => {
                if subject_tokens.next().is_none() {
                    return false;
                }
            }
            literal => {
                if subject_tokens.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    subject_tokens.next().is_none()
}

/// Does `general` match every subject `specific` matches? (`orders.>`
/// covers `orders.*.created`; `orders.*` does not cover `orders.>`.) A node
/// that advertises `general` to its peers need not also advertise
/// `specific`.
///
/// Both arguments are assumed valid patterns.
pub fn pattern_covers(general: &str, specific: &str) -> bool {
    let mut specific_tokens = tokens(specific);
    for general_token in tokens(general) {
        let Some(specific_token) = specific_tokens.next() else {
            // `specific` matches shorter subjects than `general` needs.
            return false;
        };
        match (general_token, specific_token) {
            // One or more tokens on both sides from here on.
            (FULL_WILDCARD, _) => return true,
            // `specific` matches subjects of any length; `general` does not.
            (_, FULL_WILDCARD) => return false,
            (SINGLE_WILDCARD, _) => {}
            (literal, other) if literal == other => {}
            _ => return false,
        }
    }
    specific_tokens.next().is_none()
}

/// Is there a subject both patterns match? (`orders.>` and `*.us.*` share
/// `orders.us.x`; `orders.*` and `orders.*.x` share none.) A subscription
/// that overlaps a deny-listed pattern must be filtered at delivery.
///
/// Both arguments are assumed valid patterns.
pub fn patterns_overlap(left: &str, right: &str) -> bool {
    let mut right_tokens = tokens(right);
    for left_token in tokens(left) {
        let Some(right_token) = right_tokens.next() else {
            // `right` matches only shorter subjects than `left` needs.
            return false;
        };
        match (left_token, right_token) {
            // From here on, one side takes any one or more tokens, and the
            // other has at least this one.
            (FULL_WILDCARD, _) | (_, FULL_WILDCARD) => return true,
            (SINGLE_WILDCARD, _) | (_, SINGLE_WILDCARD) => {}
            (literal, other) if literal == other => {}
            _ => return false,
        }
    }
    right_tokens.next().is_none()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Subject,
    Pattern,
}

/// Byte classes for validation; a table lookup per byte keeps the common case
/// (a plain ASCII character) to one load and one branch.
const PLAIN: u8 = 0;
const SEPARATOR: u8 = 1;
const WILDCARD: u8 = 1 << 1;
const FORBIDDEN: u8 = 1 << 2;
const NON_ASCII: u8 = 1 << 3;

static BYTE_CLASS: [u8; 256] = {
    let mut table = [PLAIN; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = match byte as u8 {
            b'.' => SEPARATOR,
            b'*' | b'>' => WILDCARD,
            0..=b' ' | 0x7F => FORBIDDEN,
            0x80.. => NON_ASCII,
            _ => PLAIN,
        };
        byte += 1;
    }
    table
};

fn validate(text: &str, limits: &SubjectLimits, kind: Kind) -> Result<usize, SubjectError> {
    if text.is_empty() {
        return Err(SubjectError::Empty);
    }
    if text.len() > limits.bytes_max {
        return Err(SubjectError::TooLong {
            len: text.len(),
            max: limits.bytes_max,
        });
    }
    // One pass over the bytes, collecting the classes seen in each token: this
    // runs on every publish.
    let bytes = text.as_bytes();
    let mut tokens = Tokens {
        count: 0,
        limits,
        kind,
        full_wildcard_at: None,
    };
    let mut start = 0;
    let mut seen = PLAIN;
    for (at, &byte) in bytes.iter().enumerate() {
        let class = BYTE_CLASS[byte as usize];
        if class == PLAIN {
            continue;
        }
        if class == SEPARATOR {
            tokens.check(&bytes[start..at], seen)?;
            start = at + 1;
            seen = PLAIN;
        } else {
            seen |= class;
        }
    }
    tokens.check(&bytes[start..], seen)?;
    Ok(tokens.count)
}

/// The state of a validation pass between tokens.
struct Tokens<'a> {
    count: usize,
    limits: &'a SubjectLimits,
    kind: Kind,
    full_wildcard_at: Option<usize>,
}

impl Tokens<'_> {
    /// Checks the next token, given the byte classes found in it.
    fn check(&mut self, token: &[u8], seen: u8) -> Result<(), SubjectError> {
        let index = self.count;
        if index == self.limits.tokens_max {
            return Err(SubjectError::TooManyTokens {
                max: self.limits.tokens_max,
            });
        }
        if let Some(at) = self.full_wildcard_at {
            return Err(SubjectError::FullWildcardNotLast { index: at });
        }
        self.count += 1;
        if token.is_empty() {
            return Err(SubjectError::EmptyToken { index });
        }
        if seen & FORBIDDEN != 0 {
            return Err(SubjectError::InvalidCharacter { index });
        }
        if seen & NON_ASCII != 0 {
            // Unicode has whitespace and control characters outside ASCII too;
            // only tokens with non-ASCII text pay for decoding.
            let text = std::str::from_utf8(token).expect("tokens of a str split at '.' are UTF-8");
            if text
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || is_invisible_format(c))
            {
                return Err(SubjectError::InvalidCharacter { index });
            }
        }
        if seen & WILDCARD == 0 {
            return Ok(());
        }
        let wildcard = match token {
            b"*" => '*',
            b">" => {
                self.full_wildcard_at = Some(index);
                '>'
            }
            _ => return Err(SubjectError::PartialWildcard { index }),
        };
        match self.kind {
            Kind::Subject => Err(SubjectError::WildcardInSubject { index, wildcard }),
            Kind::Pattern => Ok(()),
        }
    }
}

/// Unicode's format characters (general category Cf): they render as
/// nothing, so a subject holding one looks like another it is not (a
/// zero-width space in `orders\u{200B}.eu`, a right-to-left override that
/// shows `orders.ue` as `orders.eu`). Permissions and operators read subjects;
/// what they see must be what matches.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(text: &str) -> Result<(), SubjectError> {
        validate_subject(text, &SubjectLimits::default())
    }

    fn pattern(text: &str) -> Result<usize, SubjectError> {
        validate_pattern(text, &SubjectLimits::default())
    }

    #[test]
    fn accepts_plain_subjects_and_patterns() {
        assert_eq!(subject("orders.eu.created"), Ok(()));
        assert_eq!(subject("a"), Ok(()));
        assert_eq!(subject("_INBOX.abc.1"), Ok(()));
        assert_eq!(pattern("orders.*.created"), Ok(3));
        assert_eq!(pattern("orders.>"), Ok(2));
        assert_eq!(pattern(">"), Ok(1));
        assert_eq!(pattern("*.*"), Ok(2));
    }

    #[test]
    fn names_the_broken_rule() {
        assert_eq!(subject(""), Err(SubjectError::Empty));
        assert_eq!(subject(".a"), Err(SubjectError::EmptyToken { index: 0 }));
        assert_eq!(subject("a."), Err(SubjectError::EmptyToken { index: 1 }));
        assert_eq!(subject("a..b"), Err(SubjectError::EmptyToken { index: 1 }));
        assert_eq!(
            subject("a.b c"),
            Err(SubjectError::InvalidCharacter { index: 1 })
        );
        assert_eq!(
            subject("a.\tb"),
            Err(SubjectError::InvalidCharacter { index: 1 })
        );
        assert_eq!(
            subject("a.\u{0}"),
            Err(SubjectError::InvalidCharacter { index: 1 })
        );
        assert_eq!(
            subject("orders.*"),
            Err(SubjectError::WildcardInSubject {
                index: 1,
                wildcard: '*'
            })
        );
        assert_eq!(
            subject(">"),
            Err(SubjectError::WildcardInSubject {
                index: 0,
                wildcard: '>'
            })
        );
        assert_eq!(
            pattern("orders.>.created"),
            Err(SubjectError::FullWildcardNotLast { index: 1 })
        );
        assert_eq!(
            pattern("ord*"),
            Err(SubjectError::PartialWildcard { index: 0 })
        );
        assert_eq!(
            pattern("a.b>"),
            Err(SubjectError::PartialWildcard { index: 1 })
        );
    }

    #[test]
    fn enforces_the_limits() {
        let limits = SubjectLimits {
            bytes_max: 8,
            tokens_max: 3,
        };
        assert_eq!(validate_subject("a.b.c", &limits), Ok(()));
        assert_eq!(
            validate_subject("a.b.c.d", &limits),
            Err(SubjectError::TooManyTokens { max: 3 })
        );
        assert_eq!(
            validate_subject("abcdefghi", &limits),
            Err(SubjectError::TooLong { len: 9, max: 8 })
        );
        let long = "a.".repeat(200) + "a";
        assert!(matches!(subject(&long), Err(SubjectError::TooLong { .. })));
    }

    #[test]
    fn refuses_unicode_whitespace_and_accepts_other_unicode() {
        assert_eq!(subject("caf\u{e9}.men\u{fc}"), Ok(()));
        assert_eq!(
            subject("a.no\u{a0}break"),
            Err(SubjectError::InvalidCharacter { index: 1 })
        );
        assert_eq!(
            subject("a\u{2028}b"),
            Err(SubjectError::InvalidCharacter { index: 0 })
        );
    }

    #[test]
    fn refuses_invisible_characters_that_make_one_subject_look_like_another() {
        for invisible in [
            '\u{200B}',  // zero-width space
            '\u{200D}',  // zero-width joiner
            '\u{2060}',  // word joiner
            '\u{FEFF}',  // byte-order mark
            '\u{00AD}',  // soft hyphen
            '\u{202E}',  // right-to-left override
            '\u{2067}',  // right-to-left isolate
            '\u{200F}',  // right-to-left mark
            '\u{E0041}', // tag latin capital letter a
        ] {
            assert_eq!(
                subject(&format!("orders.e{invisible}u")),
                Err(SubjectError::InvalidCharacter { index: 1 }),
                "U+{:04X}",
                u32::from(invisible)
            );
            assert_eq!(
                pattern(&format!("{invisible}orders.>")),
                Err(SubjectError::InvalidCharacter { index: 0 }),
                "U+{:04X}",
                u32::from(invisible)
            );
        }
        // Visible scripts that write right to left are subjects like any other.
        assert_eq!(
            subject("\u{5D4}\u{5D6}\u{5DE}\u{5E0}\u{5D5}\u{5EA}.eu"),
            Ok(())
        );
    }

    #[test]
    fn error_messages_say_what_is_wrong() {
        let message = subject("orders..eu").unwrap_err().to_string();
        assert!(message.contains("token 1 is empty"), "{message}");
        let message = subject("orders.*").unwrap_err().to_string();
        assert!(message.contains("may not contain wildcards"), "{message}");
    }

    #[test]
    fn matches_like_nats() {
        assert!(pattern_matches("orders.*.created", "orders.eu.created"));
        assert!(!pattern_matches("orders.*.created", "orders.eu.x.created"));
        assert!(!pattern_matches("orders.*.created", "orders.created"));
        assert!(pattern_matches("orders.>", "orders.eu"));
        assert!(pattern_matches("orders.>", "orders.eu.created"));
        assert!(
            !pattern_matches("orders.>", "orders"),
            "'>' needs one token"
        );
        assert!(pattern_matches(">", "a"));
        assert!(pattern_matches(">", "a.b.c"));
        assert!(pattern_matches("*", "a"));
        assert!(!pattern_matches("*", "a.b"));
        assert!(pattern_matches("*.b.>", "a.b.c"));
        assert!(!pattern_matches("*.b.>", "a.b"));
        assert!(pattern_matches("a.b", "a.b"));
        assert!(!pattern_matches("a.b", "a.b.c"));
        assert!(!pattern_matches("a.b.c", "a.b"));
    }

    #[test]
    fn detects_wildcards() {
        assert!(has_wildcard("a.*"));
        assert!(has_wildcard(">"));
        assert!(!has_wildcard("a.b"));
    }

    /// Every pattern of up to three tokens over `a`, `b`, `*` and `>`.
    fn small_patterns() -> Vec<String> {
        let mut patterns: Vec<String> = Vec::new();
        let mut prefixes = vec![String::new()];
        for _ in 0..3 {
            let mut longer = Vec::new();
            for prefix in &prefixes {
                for token in ["a", "b", "*", ">"] {
                    let pattern = if prefix.is_empty() {
                        token.to_owned()
                    } else {
                        format!("{prefix}.{token}")
                    };
                    patterns.push(pattern.clone());
                    if token != ">" {
                        longer.push(pattern);
                    }
                }
            }
            prefixes = longer;
        }
        patterns
    }

    /// Every subject of one to five tokens over `a`, `b` and `c` (a token no
    /// pattern names, to tell `*` from a literal).
    fn small_subjects() -> Vec<String> {
        let mut subjects = Vec::new();
        let mut level = vec![String::new()];
        for _ in 0..5 {
            level = level
                .iter()
                .flat_map(|prefix| {
                    ["a", "b", "c"].map(|token| {
                        if prefix.is_empty() {
                            token.to_owned()
                        } else {
                            format!("{prefix}.{token}")
                        }
                    })
                })
                .collect();
            subjects.extend(level.iter().cloned());
        }
        subjects
    }

    #[test]
    fn covering_agrees_with_the_reference_matcher_on_every_small_pattern() {
        let patterns = small_patterns();
        let subjects = small_subjects();
        for general in &patterns {
            for specific in &patterns {
                let by_subjects = subjects.iter().all(|subject| {
                    !pattern_matches(specific, subject) || pattern_matches(general, subject)
                });
                assert_eq!(
                    pattern_covers(general, specific),
                    by_subjects,
                    "does {general} cover {specific}?"
                );
            }
        }
    }

    #[test]
    fn overlap_agrees_with_the_reference_matcher_on_every_small_pattern() {
        let patterns = small_patterns();
        let subjects = small_subjects();
        for left in &patterns {
            for right in &patterns {
                let by_subjects = subjects.iter().any(|subject| {
                    pattern_matches(left, subject) && pattern_matches(right, subject)
                });
                assert_eq!(
                    patterns_overlap(left, right),
                    by_subjects,
                    "do {left} and {right} overlap?"
                );
            }
        }
    }

    #[test]
    fn covering_examples() {
        assert!(pattern_covers("orders.>", "orders.*.created"));
        assert!(pattern_covers("orders.>", "orders.eu.>"));
        assert!(pattern_covers(">", "a"));
        assert!(pattern_covers("orders.*.created", "orders.eu.created"));
        assert!(!pattern_covers("orders.*", "orders.>"));
        assert!(!pattern_covers("orders.eu.*", "orders.*.created"));
        assert!(!pattern_covers("orders.>", "orders"));
    }
}
