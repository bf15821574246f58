"""A whole job spec, validated with the checks that need its data and its objective.

``engine.config`` checks each field and each pair of fields without importing torch;
``parse_spec`` also loads the data (``engine.data``) and asks the objective
(``engine.training.objectives``) for its special tokens, so it lives in the training layer.
"""

from __future__ import annotations

from ..config.errors import ConfigError
from ..config.schema import SECTIONS, JobSpec, _parse_section
from ..data.datasets import load_data
from .objectives import TRAINING_OBJECTIVES


def parse_spec(d: dict) -> JobSpec:
    """Validate a ``{"model": {...}, "data": {...}, "train": {...}}`` dict (missing sections and
    keys take defaults) into a ``JobSpec``, including the checks that need the data: the text
    file must be readable UTF-8, each split must be longer than the context, a synthetic
    example must fit in the context. Sets ``model.vocab_size`` from the data when it is None.
    Raises ``ConfigError`` with every problem found."""
    if not isinstance(d, dict):
        raise ConfigError({"spec": f"a job spec must be an object with sections {list(SECTIONS)}"})
    errors = {key: f"unknown section {key!r}; choose from {list(SECTIONS)}" for key in d if key not in SECTIONS}
    parsed = {}
    for section, cls in SECTIONS.items():
        parsed[section], section_errors = _parse_section(cls, d.get(section))
        errors.update(section_errors)
    model, data, train = parsed["model"], parsed["data"], parsed["train"]

    objective = train.objective if "train.objective" not in errors else "pretrain"
    if "model.family" not in errors and model.family not in TRAINING_OBJECTIVES[objective]:
        trains = list(TRAINING_OBJECTIVES[objective])
        errors["train.objective"] = (f"objective {objective!r} trains family {' or '.join(map(repr, trains))}, "
                                     f"not {model.family!r}: choose family 'decoder' or objective 'pretrain'")
    if not any(k.startswith("data") or k == "train.objective" for k in errors):
        try:
            dataset = load_data(data, objective)
        except ConfigError as e:
            errors.update(e.errors)
        else:
            # the objective's special tokens ([MASK], a start token, sentinels) sit above the data's
            family_ok = not any(k in errors for k in ("model.family", "model.block_size", "model.noise_density",
                                                      "model.mean_span_length"))
            cls = TRAINING_OBJECTIVES[objective][model.family]
            special = cls.n_special(model, dataset) if family_ok else 0
            needed = dataset.vocab_size + special
            if model.vocab_size is None:
                model.vocab_size = needed
            elif model.vocab_size < needed and "model.vocab_size" not in errors:
                errors["model.vocab_size"] = (
                    f"vocab_size ({model.vocab_size}) is smaller than the data's vocabulary "
                    f"({dataset.vocab_size} symbols{f' + {special} special tokens' if special else ''}); "
                    "leave it empty to use the data's"
                )
            if "model.block_size" not in errors:
                problem = dataset.check_block_size(model.block_size)
                if problem:
                    errors["model.block_size"] = problem
    if errors:
        raise ConfigError(errors)
    return JobSpec(model=model, data=data, train=train)
