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
from mlflow.pyfunc import PythonModel

# What predict() does when `params` leave a setting out: `pretrain generate`'s own defaults.
DEFAULTS = {"max_new_tokens": 64, "temperature": 0.8, "top_k": 50, "top_p": 1.0, "seed": 0}


class TextGenerator(PythonModel):
    def load_context(self, context) -> None:
        from pretrain.weights.model_folder import load_model_folder

        self.model, self.tokenizer = load_model_folder(Path(context.artifacts["model"]))

    def predict(self, context, model_input, params: dict | None = None) -> list[str]:
        from pretrain.train.sampling import generate_texts

        settings = DEFAULTS | (params or {})
        prompts = model_input["prompt"] if hasattr(model_input, "columns") else model_input
        return generate_texts(
            self.model,
            self.tokenizer,
            [str(prompt) for prompt in prompts],
            int(settings["max_new_tokens"]),
            temperature=float(settings["temperature"]),
            top_k=int(settings["top_k"]) or None,
            top_p=float(settings["top_p"]) if float(settings["top_p"]) < 1.0 else None,
            seed=int(settings["seed"]),
        )


mlflow.models.set_model(TextGenerator())
