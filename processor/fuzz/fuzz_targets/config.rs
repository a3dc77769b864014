//! Configuration loader (`config::Config::from_yaml`: `${VAR}` substitution, OBI's
//! YAML keys, the environment), then what the processor makes of the result: the
//! loader selection, the warnings, the process selector, the route matcher (which
//! routes a path taken from the input) and a pipeline.
//!
//! The input is the YAML text; its lines `#env NAME=VALUE` (YAML comments) also set
//! environment variables, so the variables' parsers and their precedence over the
//! file are fuzzed too.
//!
//! Checked: no panic. Errors are fine: a bad file must be refused, naming the key.

#![no_main]

use std::collections::BTreeMap;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tandem_processor::config::Config;
use tandem_processor::pipeline::route::Router;
use tandem_processor::pipeline::Pipeline;
use tandem_processor::select::Selector;
use tandem_proto::Selection;

fuzz_target!(|input: &[u8]| {
    let text = String::from_utf8_lossy(input);
    let mut env = BTreeMap::new();
    let mut path = "/";
    for line in text.lines() {
        if let Some((name, value)) = line.strip_prefix("#env ").and_then(|l| l.split_once('=')) {
            env.insert(name.to_string(), value.to_string());
        }
        if let Some(p) = line.strip_prefix("#path ") {
            path = p;
        }
    }
    let Ok(config) = Config::from_yaml(Path::new("fuzz.yml"), &text, &env) else {
        return;
    };
    std::hint::black_box(config.selection());
    std::hint::black_box(config.selection_without_kubernetes_entries());
    std::hint::black_box(config.warnings_for(false));
    std::hint::black_box(config.warnings_for(true));
    std::hint::black_box(Selector::new(&config.discovery, &Selection::default()));
    if let Ok(mut router) = Router::new(&config.routes) {
        std::hint::black_box(router.route(path));
    }
    let _ = Pipeline::with_sinks(
        &config.routes,
        &config.export,
        "fuzz".into(),
        None,
        Vec::new(),
    );
});
