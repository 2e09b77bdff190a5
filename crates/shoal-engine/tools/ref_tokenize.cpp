// Reference values for the tokenizer tests, from llama.cpp itself (the reference build of
// shared/scripts/build-llama-reference.sh, llama-cpp-python 0.3.36's vendored llama.cpp). It calls what
// `llama-tokenize` calls: llama_model_load_from_file(vocab_only) and llama_tokenize(add_special = true,
// parse_special = true), one line of ids per input file (the file's exact bytes); `--chat NAME` prints
// llama_chat_apply_template of llama.cpp's built-in template NAME on the conversation of tests/chat_builtin.rs.
// Build (L = .../src/vendor/llama.cpp, after the reference build):
//   g++ -O1 -std=c++17 tools/ref_tokenize.cpp -I$L/include -I$L/ggml/include $L/build/src/libllama.a \
//     $L/build/ggml/src/libggml.a $L/build/ggml/src/libggml-cpu.a $L/build/ggml/src/ggml-rpc/libggml-rpc.a \
//     $L/build/ggml/src/libggml-base.a -lpthread -lgomp -ldl -o /tmp/ref_tokenize
// Run: /tmp/ref_tokenize MODEL.gguf sample1.txt sample2.txt ...   |   /tmp/ref_tokenize --chat gemma
#include "llama.h"
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>
#include <cstring>
int main(int argc, char ** argv) {
    if (argc >= 3 && std::string(argv[1]) == "--chat") {
        llama_chat_message msgs[] = {{"system", "You are terse.\n"}, {"user", " Hi there "}, {"assistant", "Hello."}, {"user", "2+2?"}};
        for (int add = 1; add >= 0; add--) {
            std::vector<char> buf(4096);
            int n = llama_chat_apply_template(argv[2], msgs, 4, add, buf.data(), buf.size());
            printf("add_ass=%d n=%d [", add, n);
            fwrite(buf.data(), 1, n, stdout);
            printf("]\n");
        }
        return 0;
    }
    llama_backend_init();
    llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
    auto mp = llama_model_default_params();
    mp.vocab_only = true;
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) { fprintf(stderr, "load failed\n"); return 1; }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    for (int i = 2; i < argc; i++) {
        std::ifstream f(argv[i], std::ios::binary);
        std::stringstream ss; ss << f.rdbuf();
        std::string text = ss.str();
        std::vector<llama_token> toks(text.size() * 4 + 8);
        int n = llama_tokenize(vocab, text.data(), text.size(), toks.data(), toks.size(), true, true);
        printf("[");
        for (int j = 0; j < n; j++) printf(j ? ", %d" : "%d", toks[j]);
        printf("]\n");
    }
    llama_model_free(model);
    return 0;
}
