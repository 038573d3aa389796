// milora-convert: a PiSSA / MiLoRA adapter trained on its residual model -> a plain LoRA of rank
// 2r for the ORIGINAL model (PEFT's path_initial_model_for_weight_conversion):
//   A* = [A; -A0], B* = [B, B0], alpha* = 2 alpha (alpha*sqrt(2) with rsLoRA), so that
//   W + s*(B A - B0 A0) = W' + s*B*A. Anyone can apply the result to the unmodified base model.
//
//   milora-convert --initial INIT_DIR --trained TRAINED_DIR --out OUT
#include <string>

#include "common/cli.hpp"
#include "common/staged_output.hpp"
#include "milora/io.hpp"

int main(int argc, char** argv) {
  std::string initial, trained, out;
  CLI::App app{"milora-convert: turn a PiSSA / MiLoRA adapter trained on its residual model into a plain rank-2r LoRA\n"
               "for the original model (PEFT adapter folders in and out)."};
  app.add_option("--initial", initial, "the adapter as milora-init wrote it (before training)")
      ->required()->check(CLI::ExistingDirectory);
  app.add_option("--trained", trained, "the same adapter after training")->required()->check(CLI::ExistingDirectory);
  app.add_option("--out", out, "output folder (must not exist)")->required();
  return milora::tools::run_tool("milora-convert", app, argc, argv, [&] {
    namespace io = milora::io;
    const auto a0 = io::load_peft_adapter<float>(initial);
    const auto a = io::load_peft_adapter<float>(trained);
    const auto plain = io::to_plain_lora(a0, a);
    milora::tools::StagedOutput staged(out);
    io::save_peft_adapter(plain, staged.dir());
    staged.commit();
    std::cerr << "milora-convert: plain LoRA, r = " << plain.config.r << ", lora_alpha = " << plain.config.lora_alpha
              << ", " << plain.modules.size() << " modules, in " << out << "\n";
  });
}
