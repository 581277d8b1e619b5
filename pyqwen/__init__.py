"""pyqwen: a llama.cpp-style inference runtime for Qwen3.5/3.6 (GGUF architecture `qwen35`).

    import pyqwen
    model = pyqwen.Model.load("model.gguf")        # or Model.load() for the built-in demo model
    for chunk in model.generate("Hello", max_tokens=32):
        print(chunk.text, end="")
"""

from .errors import (ChatFileError, ChatTemplateError, ContextOverflowError, GrammarError, ModelFormatError,
                     PrefillCancelled, PyqwenError)

__version__ = "0.1.0"
__all__ = ["Model", "ModelFormatError", "ChatTemplateError", "ChatFileError", "ContextOverflowError", "GrammarError",
           "PrefillCancelled", "PyqwenError", "SamplingParams", "__version__"]


def __getattr__(name):
    # Imported lazily so that tools which only read/convert files do not need the C++ extension.
    if name == "Model":
        from .model import Model

        return Model
    if name == "SamplingParams":
        from .sampling import SamplingParams

        return SamplingParams
    raise AttributeError(name)
