//! `${VAR}` substitution in the YAML text, before it is parsed (as OBI does).
//!
//! - `${VAR}` and `${env:VAR}`: the value of `VAR`; an error when `VAR` is not set
//!   (OBI substitutes an empty string; tandem refuses to guess). Set but empty gives
//!   an empty string.
//! - `${VAR:-default}`: `default` when `VAR` is unset or empty (shell semantics).
//! - `$$` is a literal `$` (so `$${VAR}` gives `${VAR}`); any other `$` is kept.
//! - Lines whose first non-blank character is `#` are comments and are left alone.
//!
//! Values are inserted as text, so a value containing YAML syntax changes the
//! document's structure: quote the placeholder (`"${VAR}"`) for free-form values.

use super::env::Env;

/// A substitution that could not be done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubstError {
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub message: String,
}

pub(crate) fn substitute(text: &str, env: &dyn Env) -> Result<String, SubstError> {
    let mut out = String::with_capacity(text.len());
    for (index, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        substitute_line(line, index + 1, env, &mut out)?;
    }
    Ok(out)
}

fn substitute_line(
    line: &str,
    line_no: usize,
    env: &dyn Env,
    out: &mut String,
) -> Result<(), SubstError> {
    let mut rest = line;
    let mut column = 1;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        column += rest[..pos].chars().count();
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            column += 2;
        } else if let Some(body_and_tail) = after.strip_prefix('{') {
            let err = |message: String| SubstError {
                line: line_no,
                column,
                message,
            };
            let close = body_and_tail.find('}').ok_or_else(|| {
                err("`${` without a closing `}` (write `$${` for a literal `${`)".to_string())
            })?;
            let body = &body_and_tail[..close];
            out.push_str(&expand(body, env).map_err(err)?);
            rest = &body_and_tail[close + 1..];
            column += body.chars().count() + 3;
        } else {
            out.push('$');
            rest = after;
            column += 1;
        }
    }
    out.push_str(rest);
    Ok(())
}

fn expand(body: &str, env: &dyn Env) -> Result<String, String> {
    let body = body.strip_prefix("env:").unwrap_or(body);
    let (name, default) = match body.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (body, None),
    };
    if !is_var_name(name) {
        return Err(format!(
            "`${{{body}}}` is not a variable reference (expected ${{NAME}} or ${{NAME:-default}}, \
             NAME made of letters, digits and _; write `$${{` for a literal `${{`)"
        ));
    }
    match (env.get(name), default) {
        (Some(v), Some(d)) if v.is_empty() => Ok(d.to_string()),
        (Some(v), _) => Ok(v),
        (None, Some(d)) => Ok(d.to_string()),
        (None, None) => Err(format!(
            "environment variable {name} is not set (referenced as ${{{name}}}; \
             give a default with ${{{name}:-default}})"
        )),
    }
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(text: &str) -> Result<String, SubstError> {
        let env = [("HOST", "otelcol"), ("EMPTY", ""), ("PORT", "4317")];
        substitute(text, &env)
    }

    #[test]
    fn replaces_variables_and_defaults() {
        assert_eq!(
            sub("endpoint: http://${HOST}:${env:PORT}\n").unwrap(),
            "endpoint: http://otelcol:4317\n"
        );
        assert_eq!(sub("a: ${MISSING:-x y}\n").unwrap(), "a: x y\n");
        assert_eq!(sub("a: ${EMPTY:-d}\n").unwrap(), "a: d\n");
        assert_eq!(sub("a: '${EMPTY}'\n").unwrap(), "a: ''\n");
        assert_eq!(sub("a: ${MISSING:-}\n").unwrap(), "a: \n");
    }

    #[test]
    fn dollar_dollar_escapes_and_lone_dollars_stay() {
        assert_eq!(sub("a: $${HOST}\n").unwrap(), "a: ${HOST}\n");
        assert_eq!(sub("a: cost$5 $$\n").unwrap(), "a: cost$5 $\n");
        assert_eq!(sub("a: end$").unwrap(), "a: end$");
    }

    #[test]
    fn unset_variable_is_an_error_naming_it_and_the_line() {
        let e = sub("a: 1\nb:\n  c: x${NOPE}\n").unwrap_err();
        assert_eq!((e.line, e.column), (3, 7));
        assert!(e.message.contains("NOPE is not set"), "{}", e.message);
        assert!(e.message.contains("${NOPE:-default}"), "{}", e.message);
    }

    #[test]
    fn malformed_references_are_errors() {
        let e = sub("a: ${HOST\n").unwrap_err();
        assert!(e.message.contains("closing"), "{}", e.message);
        let e = sub("a: ${1X}\n").unwrap_err();
        assert!(
            e.message.contains("not a variable reference"),
            "{}",
            e.message
        );
    }

    #[test]
    fn comment_lines_are_left_alone() {
        assert_eq!(
            sub("# set ${NOPE} to ...\na: ${HOST}\n").unwrap(),
            "# set ${NOPE} to ...\na: otelcol\n"
        );
    }
}
