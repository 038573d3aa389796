// milora-convert: a PiSSA / MiLoRA adapter trained on its residual model -> a plain LoRA of rank
// 2r for the ORIGINAL model (PEFT's path_initial_model_for_weight_conversion):
//   A* = [A; -A0], B* = [B, B0], alpha* = 2 alpha (alpha*sqrt(2) with rsLoRA), so that
//   W + s*(B A - B0 A0) = W' + s*B*A. Anyone can apply the result to the unmodified base model.
// With --format gguf the plain LoRA is written as llama.cpp's GGUF LoRA adapter (for the original
// model in --base, whose config.json gives the architecture and heads), F32 / F16 / BF16; a plain
// LoRA (a LoRA run's checkpoint, or the trainer's plain_lora export) converts without --initial.
// A GGUF LoRA adapter as --trained (llama.cpp's, or one milora wrote) converts back to a PEFT
// folder, with --base for the model's names and heads.
//
//   milora-convert --initial INIT_DIR --trained TRAINED_DIR --out OUT
//   milora-convert [--initial INIT_DIR] --trained TRAINED_DIR --format gguf --base MODEL_DIR [--outtype f32|f16|bf16] --out OUT.gguf
//   milora-convert --trained ADAPTER.gguf --base MODEL_DIR --out OUT
#include <string>

#include "common/cli.hpp"
#include "common/staged_output.hpp"
#include "llama/gguf_export.hpp"
#include "milora/io.hpp"

int main(int argc, char** argv) {
  std::string initial, trained, out, format = "peft", base, outtype = "f32";
  CLI::App app{"milora-convert: turn a PiSSA / MiLoRA adapter trained on its residual model into a plain rank-2r LoRA\n"
               "for the original model (a PEFT folder, or llama.cpp's GGUF LoRA adapter)."};
  app.add_option("--initial", initial, "the adapter as milora-init wrote it (before training); without it (gguf only) --trained is a plain LoRA")
      ->check(CLI::ExistingDirectory);
  app.add_option("--trained", trained, "the same adapter after training (a PEFT folder, or a GGUF LoRA adapter to convert to PEFT)")
      ->required()->check(CLI::ExistingPath);
  app.add_option("--format", format, "peft (a folder) or gguf (a file for llama.cpp's --lora)")->capture_default_str()->check(CLI::IsMember({"peft", "gguf"}));
  app.add_option("--base", base, "gguf: the original model's folder (its config.json)")->check(CLI::ExistingDirectory);
  app.add_option("--outtype", outtype, "gguf: f32, f16 or bf16")->capture_default_str()->check(CLI::IsMember({"f32", "f16", "bf16"}));
  app.add_option("--out", out, "output folder, or .gguf file (must not exist)")->required();
  return milora::tools::run_tool("milora-convert", app, argc, argv, [&] {
    namespace io = milora::io;
    const bool from_gguf = std::filesystem::is_regular_file(trained);
    if (from_gguf && (format != "peft" || !initial.empty()))
      throw milora::value_error("a GGUF --trained adapter converts to --format peft, without --initial");
    if (format == "peft" && initial.empty() && !from_gguf) throw milora::value_error("--format peft needs --initial (a plain LoRA needs no conversion)");
    if ((format == "gguf" || from_gguf) && base.empty()) throw milora::value_error("GGUF needs --base, the original model's folder");
    if (format != "gguf" && app.count("--outtype")) throw milora::value_error("--outtype applies to --format gguf (PEFT factors are F32)");
    if (std::filesystem::exists(out)) throw milora::value_error("--out '" + out + "' exists");
    const auto a = from_gguf ? llama::read_adapter_gguf(trained, llama::LlamaConfig::from_model(io::HFModel(base)))
                             : io::load_peft_adapter<float>(trained);
    const auto plain = initial.empty() ? a : io::to_plain_lora(io::load_peft_adapter<float>(initial), a);
    if (format == "gguf") {
      const io::HFModel model(base);
      const auto config = llama::LlamaConfig::from_model(model);
      llama::write_adapter_gguf(plain, config, out, llama::parse_gguf_file_type(outtype), std::filesystem::path(trained).filename().string());
    } else {
      milora::tools::StagedOutput staged(out);
      io::save_peft_adapter(plain, staged.dir());
      staged.commit();
    }
    std::cerr << "milora-convert: plain LoRA, r = " << plain.config.r << ", lora_alpha = " << plain.config.lora_alpha
              << ", " << plain.modules.size() << " modules, in " << out << "\n";
  });
}
