"""Runs described in YAML: read with PyYAML's safe loader, validated by pydantic models
built from the registries (`schema`), resolved to a plain record, built into objects and
run with `meta_train`. Sits above `bilevel.training`; only the CLI sits above it."""

from bilevel.config.build import build
from bilevel.config.errors import ConfigError
from bilevel.config.load import Config, from_dict, load_config
from bilevel.config.runs import check_gradients, run, validate
from bilevel.config.schema import json_schema

__all__ = ["Config", "ConfigError", "build", "check_gradients", "from_dict", "json_schema",
           "load_config", "run", "validate"]
