"""The MLflow model that `pretrain export --register` logs: an exported folder that continues prompts.

MLflow loads it "from code": this file is saved with the model and run by
`mlflow.pyfunc.load_model`, in place of a pickled object, so what loading
runs can be read here. The exported folder is the model's artifact; `pretrain`
must be installed where the model is loaded.

    model = mlflow.pyfunc.load_model("models:/gpt-tiny@candidate")
    model.predict(pandas.DataFrame({"prompt": ["Return the", "def"]}), params={"max_new_tokens": 32})
    # -> ["Return the ...", "def ..."]: each prompt followed by its continuation
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import torch
from mlflow.pyfunc import PythonModel

from data_pipeline.tokenizer import end_of_text_id
from model import generate

# What predict() does when `params` leave a setting out: `pretrain generate`'s own defaults.
DEFAULTS = {"max_new_tokens": 64, "temperature": 0.8, "top_k": 50, "top_p": 1.0, "seed": 0}


class TextGenerator(PythonModel):
    def load_context(self, context) -> None:
        from pretrain.weights.model_folder import load_model_folder

        self.model, self.tokenizer = load_model_folder(Path(context.artifacts["model"]))

    def predict(self, context, model_input, params: dict | None = None) -> list[str]:
        """Each prompt and its continuation, as `pretrain generate` makes them (model.generate, batched)."""
        settings = DEFAULTS | (params or {})
        prompts = model_input["prompt"] if hasattr(model_input, "columns") else model_input
        eot = end_of_text_id(self.tokenizer)
        encoded = [self.tokenizer.encode(str(p), add_special_tokens=False).ids or [eot] for p in prompts]
        top_p = float(settings["top_p"])
        continuations = generate(
            self.model,
            encoded,
            int(settings["max_new_tokens"]),
            float(settings["temperature"]),
            int(settings["top_k"]) or None,
            top_p if top_p < 1.0 else None,
            stop_tokens=[eot],
            generator=torch.Generator().manual_seed(int(settings["seed"])),
        )
        return [self.tokenizer.decode(ids + new, skip_special_tokens=True) for ids, new in zip(encoded, continuations)]


mlflow.models.set_model(TextGenerator())
