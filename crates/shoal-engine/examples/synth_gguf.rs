//! Writes the tiny synthetic models of tests/common/synth.rs, for running llama.cpp on the same files:
//! `cargo run -p shoal-engine --example synth_gguf -- OUT_DIR SmolLM2-135M-Instruct.Q4_1.gguf`
//! (the second file only lends its tokenizer metadata).

#[path = "../tests/common/synth.rs"]
mod synth;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, tokenizer] = args.as_slice() else {
        eprintln!("usage: synth_gguf OUT_DIR TOKENIZER_SOURCE.gguf");
        std::process::exit(2);
    };
    let src = match shoal_engine::gguf::GgufFile::open(tokenizer) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("{dir}: {e}");
        std::process::exit(1);
    }
    for model in synth::MODELS {
        let path = std::path::Path::new(dir).join(format!("{model}.gguf"));
        if let Err(e) = synth::write(model, &path, &src) {
            eprintln!("{}: {e}", path.display());
            std::process::exit(1);
        }
        println!("{}", path.display());
    }
}
