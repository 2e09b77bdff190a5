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
