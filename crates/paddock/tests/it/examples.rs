//! The examples that run real models, tested with the real libraries from
//! .venv-test (pinned in crates/paddock/tests/python/requirements*.txt).

use std::process::Command;

use serde_json::Value;

use crate::harness::{Env, test_python};

/// examples/embeddings through the official openai client: sentence-transformers'
/// published similarity matrix to 3 decimals, base64 and float, usage, 400s.
#[test]
fn the_embeddings_example_answers_the_openai_client_like_sentence_transformers() {
    let env = Env::new();
    let python = test_python(
        "import numpy, tokenizers, safetensors, openai, importlib.util as u; assert u.find_spec('all_minilm_l6_v2')",
    );
    let root = format!("{}/../..", env!("CARGO_MANIFEST_DIR"));
    env.config(&format!(
        "[services.embeddings]\ncommand = [{python:?}, \"{root}/examples/embeddings/worker.py\"]\nworkers = 2\nenv = {{ PYTHONPATH = \"{root}/sdk/python:{root}/examples/embeddings\" }}\n"
    ));
    env.start_ok();
    let out = Command::new(&python)
        .arg(format!(
            "{root}/crates/paddock/tests/python/embeddings_client.py"
        ))
        .arg(env.port.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    for fmt in ["base64", "float"] {
        assert_eq!(report[fmt]["dims"], 384, "{report}");
        assert!(
            report[fmt]["max_error"].as_f64().unwrap() < 5e-4,
            "{report}"
        );
        // [CLS] … [SEP] of the three sentences: 8 + 9 + 8 tokens.
        assert_eq!(report[fmt]["prompt_tokens"], 25, "{report}");
    }
    assert_eq!(report["single"], 1);
    assert_eq!(report["token_ids"], 400, "{report}");
    env.stop_ok();
}
