//! What tandem reads from SQL text: the operation (`SELECT`, `INSERT`, ...), the
//! table it acts on (`db.collection.name`), and the text with its literals replaced
//! by `?` (`db.query.text`).
//!
//! Lexing is deliberately small: quoted strings (`'...'` with `''`, `E'...'` with
//! backslash escapes, dollar-quoted `$tag$...$tag$`), quoted identifiers (`"..."`),
//! comments (`--`, `/* */`), numbers, words. Text cut short by the capture is handled
//! like complete text (an unterminated string is still replaced by `?`).

/// Most bytes of query text kept (sanitized); longer text is cut at a char boundary.
pub const MAX_QUERY_TEXT: usize = 2048;

/// The query's operation, collection and sanitized text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SqlSummary {
    pub operation: Option<String>,
    pub collection: Option<String>,
    pub text: String,
}

/// Summarizes `query` (maybe a capture-truncated prefix).
pub fn summarize(query: &str) -> SqlSummary {
    let tokens = lex(query);
    let words: Vec<&Token> = tokens
        .iter()
        .filter(|t| !matches!(t.kind, Kind::Other | Kind::Comment))
        .collect();
    let operation = words
        .first()
        .filter(|t| t.kind == Kind::Word)
        .map(|t| t.text.to_ascii_uppercase());
    let collection = operation.as_deref().and_then(|op| collection(op, &words));
    SqlSummary {
        operation,
        collection,
        text: sanitize(query),
    }
}

/// `query` with string and numeric literals replaced by `?`, comments kept out.
pub fn sanitize(query: &str) -> String {
    let mut out = String::with_capacity(query.len().min(MAX_QUERY_TEXT));
    for t in lex(query) {
        if out.len() >= MAX_QUERY_TEXT {
            break;
        }
        match t.kind {
            Kind::Literal => out.push('?'),
            Kind::Comment => {}
            _ => out.push_str(t.text),
        }
    }
    if out.len() > MAX_QUERY_TEXT {
        let mut cut = MAX_QUERY_TEXT;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out.trim().to_string()
}

/// The table named after the operation's keyword, when the statement says.
fn collection(op: &str, words: &[&Token]) -> Option<String> {
    let after = |keyword: &str| -> Option<String> {
        let i = words
            .iter()
            .position(|t| t.kind == Kind::Word && t.text.eq_ignore_ascii_case(keyword))?;
        name_at(words, i + 1)
    };
    let skip_if = |start: usize| -> usize {
        // `IF [NOT] EXISTS`
        let is = |i: usize, w: &str| {
            words
                .get(i)
                .is_some_and(|t| t.kind == Kind::Word && t.text.eq_ignore_ascii_case(w))
        };
        if is(start, "IF") && is(start + 1, "NOT") && is(start + 2, "EXISTS") {
            start + 3
        } else if is(start, "IF") && is(start + 1, "EXISTS") {
            start + 2
        } else {
            start
        }
    };
    match op {
        "SELECT" | "DELETE" => {
            // A function call (`FROM generate_series(1, 10)`) names no table.
            let i = words
                .iter()
                .position(|t| t.kind == Kind::Word && t.text.eq_ignore_ascii_case("FROM"))?;
            let call = words.get(i + 2).is_some_and(|t| t.text == "(");
            if call {
                None
            } else {
                name_at(words, i + 1)
            }
        }
        "INSERT" | "REPLACE" => after("INTO"),
        "UPDATE" => {
            let mut i = 1;
            if words
                .get(1)
                .is_some_and(|t| t.text.eq_ignore_ascii_case("ONLY"))
            {
                i = 2;
            }
            name_at(words, i)
        }
        "COPY" => name_at(words, 1),
        "TRUNCATE" => {
            let i = if words
                .get(1)
                .is_some_and(|t| t.text.eq_ignore_ascii_case("TABLE"))
            {
                2
            } else {
                1
            };
            name_at(words, i)
        }
        "CREATE" | "DROP" | "ALTER" => {
            // CREATE [UNLOGGED|TEMP|TEMPORARY] TABLE [IF NOT EXISTS] name
            let i = words
                .iter()
                .take(4)
                .position(|t| t.kind == Kind::Word && t.text.eq_ignore_ascii_case("TABLE"))?;
            name_at(words, skip_if(i + 1))
        }
        _ => None,
    }
}

/// A (maybe schema-qualified) table name starting at word `i`: identifiers joined
/// by `.`, quotes removed.
fn name_at(words: &[&Token], i: usize) -> Option<String> {
    let mut name = String::new();
    let mut j = i;
    loop {
        let t = words.get(j)?;
        match t.kind {
            Kind::Word if !is_reserved(t.text) => name.push_str(t.text),
            Kind::Quoted => name.push_str(t.text.trim_matches('"')),
            _ => break,
        }
        if words.get(j + 1).is_some_and(|t| t.text == ".") {
            name.push('.');
            j += 2;
        } else {
            break;
        }
    }
    let name = name.trim_end_matches('.').to_string();
    (!name.is_empty()).then_some(name)
}

fn is_reserved(word: &str) -> bool {
    const RESERVED: [&str; 8] = [
        "SELECT", "WHERE", "LATERAL", "ONLY", "VALUES", "SET", "DEFAULT", "AS",
    ];
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(word))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Word,
    /// A `"quoted identifier"`.
    Quoted,
    Literal,
    Comment,
    /// Punctuation, a parameter placeholder (`$1`), an operator.
    Punct,
    /// Whitespace.
    Other,
}

#[derive(Debug)]
struct Token<'a> {
    kind: Kind,
    text: &'a str,
}

/// Splits `s` into tokens; never fails (unterminated constructs run to the end).
fn lex(s: &str) -> Vec<Token<'_>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        let kind = if c.is_ascii_whitespace() {
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            Kind::Other
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            Kind::Comment
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                i += 1;
            }
            i = (i + 2).min(b.len());
            Kind::Comment
        } else if c == b'\'' {
            i = end_of_string(b, i + 1, false);
            Kind::Literal
        } else if (c == b'E' || c == b'e') && b.get(i + 1) == Some(&b'\'') {
            i = end_of_string(b, i + 2, true);
            Kind::Literal
        } else if c == b'"' {
            i += 1;
            while i < b.len() {
                if b[i] == b'"' {
                    if b.get(i + 1) == Some(&b'"') {
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                i += 1;
            }
            Kind::Quoted
        } else if c == b'$' {
            // $1 placeholder, or $tag$ ... $tag$ dollar quoting.
            let mut j = i + 1;
            if b.get(j).is_some_and(u8::is_ascii_digit) {
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                i = j;
                Kind::Punct
            } else {
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                if b.get(j) == Some(&b'$') {
                    let tag = &b[i..=j];
                    let body = j + 1;
                    i = find(b, body, tag).map_or(b.len(), |k| k + tag.len());
                    Kind::Literal
                } else {
                    i += 1;
                    Kind::Punct
                }
            }
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                // exponent sign
                if (b[i] == b'e' || b[i] == b'E') && matches!(b.get(i + 1), Some(b'+') | Some(b'-'))
                {
                    i += 2;
                    continue;
                }
                i += 1;
            }
            Kind::Literal
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] >= 0x80) {
                i += 1;
            }
            Kind::Word
        } else {
            i += 1;
            Kind::Punct
        };
        // Never split a UTF-8 sequence: every branch stops at an ASCII byte or the end.
        let text = s.get(start..i).unwrap_or("");
        out.push(Token { kind, text });
    }
    out
}

/// Index after the closing quote of a string whose body starts at `i`.
fn end_of_string(b: &[u8], mut i: usize, backslash: bool) -> usize {
    while i < b.len() {
        match b[i] {
            b'\\' if backslash => i += 2,
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

fn find(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(q: &str) -> (Option<String>, Option<String>, String) {
        let r = summarize(q);
        (r.operation, r.collection, r.text)
    }

    #[test]
    fn operations_tables_and_literals() {
        let cases: &[(&str, Option<&str>, Option<&str>, &str)] = &[
            (
                "SELECT * FROM users WHERE id = 42 AND name = 'bob'",
                Some("SELECT"),
                Some("users"),
                "SELECT * FROM users WHERE id = ? AND name = ?",
            ),
            (
                "insert into public.accounts (a, b) values (1.5, 'it''s')",
                Some("INSERT"),
                Some("public.accounts"),
                "insert into public.accounts (a, b) values (?, ?)",
            ),
            (
                "UPDATE pgbench_accounts SET abalance = abalance + -3 WHERE aid = $1",
                Some("UPDATE"),
                Some("pgbench_accounts"),
                "UPDATE pgbench_accounts SET abalance = abalance + -? WHERE aid = $1",
            ),
            (
                "DELETE FROM \"Order Items\" WHERE x = E'a\\'b'",
                Some("DELETE"),
                Some("Order Items"),
                "DELETE FROM \"Order Items\" WHERE x = ?",
            ),
            ("  -- comment\n select 1", Some("SELECT"), None, "select ?"),
            (
                "CREATE TABLE IF NOT EXISTS t1 (id int)",
                Some("CREATE"),
                Some("t1"),
                "CREATE TABLE IF NOT EXISTS t1 (id int)",
            ),
            (
                "drop table if exists t2",
                Some("DROP"),
                Some("t2"),
                "drop table if exists t2",
            ),
            (
                "SELECT $$x 'y' 1$$, $a$b$a$ FROM t",
                Some("SELECT"),
                Some("t"),
                "SELECT ?, ? FROM t",
            ),
            ("BEGIN", Some("BEGIN"), None, "BEGIN"),
            (
                "SELECT g FROM generate_series(1, 10) AS g",
                Some("SELECT"),
                None,
                "SELECT g FROM generate_series(?, ?) AS g",
            ),
            ("SELECT 'unterminated", Some("SELECT"), None, "SELECT ?"),
            (
                "SELECT 1e-5, 0x1F FROM t",
                Some("SELECT"),
                Some("t"),
                "SELECT ?, ? FROM t",
            ),
            (
                "TRUNCATE TABLE pgbench_history",
                Some("TRUNCATE"),
                Some("pgbench_history"),
                "TRUNCATE TABLE pgbench_history",
            ),
            ("", None, None, ""),
            ("(select 1)", None, None, "(select ?)"),
        ];
        for (q, op, coll, text) in cases {
            assert_eq!(
                s(q),
                (
                    op.map(String::from),
                    coll.map(String::from),
                    text.to_string()
                ),
                "{q:?}"
            );
        }
    }

    #[test]
    fn long_text_is_bounded() {
        let q = format!("SELECT {}", "a, ".repeat(5000));
        assert!(sanitize(&q).len() <= MAX_QUERY_TEXT);
        let q = format!("SELECT '{}'", "é".repeat(5000));
        assert_eq!(sanitize(&q), "SELECT ?");
    }

    proptest! {
        #[test]
        fn never_panics(q in ".{0,200}") {
            let r = summarize(&q);
            prop_assert!(r.text.len() <= MAX_QUERY_TEXT);
        }

        #[test]
        fn literals_never_survive(lit in "[^']{0,50}", n in any::<u32>()) {
            let q = format!("SELECT a FROM t WHERE x = '{lit}' AND y = {n}");
            prop_assert_eq!(sanitize(&q), "SELECT a FROM t WHERE x = ? AND y = ?");
        }
    }
}
