"""Exception types users can catch."""


class PyqwenError(Exception):
    """Base class of pyqwen's errors."""


class ModelFormatError(PyqwenError, ValueError):
    """A model file is not a valid qwen35 GGUF (names the offending key or tensor)."""


class ContextOverflowError(PyqwenError, ValueError):
    """A prompt (plus the tokens to generate) does not fit in the context window."""


class ChatTemplateError(PyqwenError, ValueError):
    """A chat template could not be compiled, or refused the conversation (`raise_exception`)."""


class PrefillCancelled(PyqwenError):
    """A prefill stopped between pieces because its progress callback returned False; `done` tokens of
    the feed reached the state (state.pos says where it stands)."""

    def __init__(self, done: int, total: int):
        super().__init__(f"prefill cancelled after {done} of {total} tokens")
        self.done, self.total = done, total


class ChatFileError(PyqwenError, ValueError):
    """A saved conversation (`pyqwen chat`'s /load) that is unreadable, corrupt, or from another model."""


class CLIError(ValueError):
    """Bad command-line input; the CLIs print it as one line and exit 2."""


class GrammarError(PyqwenError, ValueError):
    """A response format, JSON schema, grammar or forced tool choice that cannot be enforced (invalid, or
    beyond what the grammar engine supports); `param` names the request field it came from."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param
