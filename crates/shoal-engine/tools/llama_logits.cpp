// Reference values for tests/architectures.rs, from llama.cpp's C API: loads a GGUF, feeds the given token ids as one
// batch, prints the first step's logits (the top ones, the sum and the sum of squares of all) and then N greedy tokens
// (argmax, end-of-generation ignored), with an f32 KV cache and flash attention off so nothing is rounded to f16 on
// the way. Our own program: it only calls llama.h.
//
// Build against the static libraries of a llama.cpp build (../shared/scripts/build-llama-reference.sh):
//   L=/tmp/llama-reference/src/vendor/llama.cpp
//   g++ -O2 -std=c++17 tools/llama_logits.cpp -I$L/include -I$L/ggml/include -L$L/build/src -L$L/build/ggml/src \
//     -L$L/build/ggml/src/ggml-rpc -lllama -lggml -lggml-cpu -lggml-rpc -lggml-base -lgomp -lpthread -o /tmp/llama_logits
// Run: /tmp/llama_logits MODEL.gguf N_GREEDY ID ID ...
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <numeric>
#include <vector>

#include "llama.h"

static void quiet(enum ggml_log_level level, const char * text, void *) {
    if (level >= GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

static int argmax(const float * l, int n) {
    return (int) (std::max_element(l, l + n) - l);
}

int main(int argc, char ** argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL N_GREEDY ID...\n", argv[0]);
        return 2;
    }
    llama_log_set(quiet, nullptr);
    llama_backend_init();
    const int n_greedy = atoi(argv[2]);
    std::vector<llama_token> prompt;
    for (int i = 3; i < argc; i++) prompt.push_back(atoi(argv[i]));

    llama_model_params mp = llama_model_default_params();
    // No repacked weight layouts: on this machine the AMX one faults (tile instructions without the kernel's
    // permission), and the plain layout is the one our kernels mirror.
    mp.use_extra_bufts = false;
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) { fprintf(stderr, "cannot load %s\n", argv[1]); return 1; }
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 256;
    cp.n_batch = 256;
    cp.n_ubatch = 256;
    cp.n_threads = 2;
    cp.n_threads_batch = 2;
    cp.type_k = GGML_TYPE_F32;
    cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "cannot create a context\n"); return 1; }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));

    if (llama_decode(ctx, llama_batch_get_one(prompt.data(), (int32_t) prompt.size()))) {
        fprintf(stderr, "decode failed\n");
        return 1;
    }
    const float * l = llama_get_logits_ith(ctx, -1);
    std::vector<int> idx(n_vocab);
    std::iota(idx.begin(), idx.end(), 0);
    std::partial_sort(idx.begin(), idx.begin() + 8, idx.end(), [&](int a, int b) { return l[a] > l[b]; });
    printf("top8");
    for (int i = 0; i < 8; i++) printf(" (%d, %.4f),", idx[i], l[idx[i]]);
    double sum = 0, sq = 0;
    for (int i = 0; i < n_vocab; i++) { sum += l[i]; sq += (double) l[i] * l[i]; }
    printf("\nsum %.4f sumsq %.4f\ngreedy", sum, sq);
    llama_token t = argmax(l, n_vocab);
    for (int i = 0; i < n_greedy; i++) {
        printf(" %d,", t);
        if (i + 1 == n_greedy) break;
        if (llama_decode(ctx, llama_batch_get_one(&t, 1))) { fprintf(stderr, "decode failed\n"); return 1; }
        t = argmax(llama_get_logits_ith(ctx, -1), n_vocab);
    }
    printf("\n");
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
