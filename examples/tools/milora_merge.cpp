// milora-merge: a model folder with a LoRA adapter merged into its weights, W <- W + s*B*A.
//
//   milora-merge --model DIR --adapter ADAPTER_DIR --out OUT
//
// For a PiSSA / MiLoRA adapter, --model is the residual folder milora-init wrote (or use
// milora-convert first and merge into the original model). Merged weights keep their dtype.
//
//   milora-merge --model DIR [--adapter ADAPTER_DIR] --format gguf [--outtype f32|f16|bf16|q8_0] --out OUT.gguf
//
// writes the (merged) LLaMA / Mistral / Qwen2 model as a GGUF llama.cpp runs, with the folder's
// tokenizer (llama/gguf_export.hpp); without --adapter, the model as it is.
#include <set>
#include <string>

#include "common/cli.hpp"
#include "common/progress.hpp"
#include "common/staged_output.hpp"
#include "llama/gguf_export.hpp"
#include "milora/io.hpp"
#include "milora/milora.hpp"

int main(int argc, char** argv) {
  std::string model_dir, adapter_dir, out, format = "hf", outtype = "f16";
  CLI::App app{"milora-merge: merge a LoRA adapter (PEFT folder) into a Hugging Face model folder, W <- W + s*B*A."};
  app.add_option("--model", model_dir, "Hugging Face model folder (for PiSSA / MiLoRA: the residual folder)")
      ->required()->check(CLI::ExistingDirectory);
  app.add_option("--adapter", adapter_dir, "PEFT adapter folder (optional with --format gguf)")->check(CLI::ExistingDirectory);
  app.add_option("--format", format, "hf (a model folder) or gguf (a file llama.cpp runs)")->capture_default_str()->check(CLI::IsMember({"hf", "gguf"}));
  app.add_option("--outtype", outtype, "gguf: the 2-D weights' type, f32, f16, bf16 or q8_0")->capture_default_str()
      ->check(CLI::IsMember({"f32", "f16", "bf16", "q8_0"}));
  app.add_option("--out", out, "output folder, or .gguf file (must not exist)")->required();
  return milora::tools::run_tool("milora-merge", app, argc, argv, [&] {
    namespace io = milora::io;
    using B = milora::EigenBackend<float>;
    using milora::detail::concat;
    const io::HFModel model(model_dir);
    if (format == "gguf") {
      if (std::filesystem::exists(out)) throw milora::value_error("--out '" + out + "' exists");
      const auto config = llama::LlamaConfig::from_model(model);
      std::optional<io::PeftAdapter<float>> adapter;
      if (!adapter_dir.empty()) adapter = io::load_peft_adapter<float>(adapter_dir);
      llama::write_model_gguf(model, config, adapter ? &*adapter : nullptr, out, llama::parse_gguf_file_type(outtype));
      std::cerr << "milora-merge: " << (adapter ? "merged " + std::to_string(adapter->modules.size()) + " modules, " : std::string())
                << "GGUF (" << outtype << ") in " << out << "\n";
      return;
    }
    if (adapter_dir.empty()) throw milora::value_error("--adapter is required (except with --format gguf)");
    if (app.count("--outtype")) throw milora::value_error("--outtype applies to --format gguf (a model folder keeps its dtypes)");
    const auto adapter = io::load_peft_adapter<float>(adapter_dir);
    std::set<std::string> weights;
    for (const auto& [module, f] : adapter.modules) {  // every check before anything is written
      const std::string name = module + ".weight";
      if (!model.contains(name))
        throw milora::format_error(concat("the adapter has module '", module, "' but the model has no '", name, "'"));
      const auto& info = model.info(name);
      if (info.shape.size() != 2 || info.shape[0] != f.B.rows || info.shape[1] != f.A.cols)
        throw milora::shape_error(concat("'", name, "' does not fit the adapter's B ", f.B.rows, "x", f.B.cols, " * A ",
                                         f.A.rows, "x", f.A.cols));
      if (!io::dtype_info(info.dtype).floating_point)
        throw milora::format_error(concat("dtype unsupported: '", name, "' is ", io::dtype_name(info.dtype)));
      weights.insert(name);
    }
    const auto s = float(adapter.config.scale());
    milora::tools::StagedOutput staged(out);
    milora::tools::Progress progress(weights.size());
    io::write_hf_model<float>(model, staged.dir(), [&](const std::string& n) { return weights.count(n) > 0; },
                              [&](const std::string& name, io::HostMatrix<float>& w) {
                                const auto started = progress.start();
                                const auto& f = adapter.modules.at(io::module_of_weight(name));
                                io::require_finite(w, concat("'", name, "' of ", model_dir));
                                io::merge_into<B>(w, f, s, concat("'", name, "'"));  // an overflow in its dtype's range is named too
                                progress.done(io::module_of_weight(name), w.rows, w.cols, started);
                              });
    staged.commit();
    std::cerr << "milora-merge: merged " << weights.size() << " weights (s = " << s << ") into " << out << "\n";
  });
}
