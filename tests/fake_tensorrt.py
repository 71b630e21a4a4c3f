"""A stand-in `tensorrt` module that records the calls edgeres makes, for the call-level tests.

Its names come from tests/data/tensorrt-10.13-api.json, generated from tensorrt-stubs 10.13 by
`python -m edgeres.tensorrt.stubs typings --from typings/.site --api-json tests/data/tensorrt-10.13-api.json`. Every
attribute read or written on the module, on an enumeration or on an object it hands out is checked against that
list: a name TensorRT 10.13 does not have raises AttributeError, as it would on a device. `make_tensorrt(11)` is the
same API minus what NVIDIA's migration notes list as removed in TensorRT 11 (tests/data/tensorrt-11-removed.json,
with the sources). The stand-in implements only the part of the API edgeres' builder and runner use; reaching a real
TensorRT name it does not implement raises NotImplementedError, so a gap in the stand-in never passes for a bug.

What TensorRT would compute (kernels, engines) is not simulated: the builder returns placeholder bytes, the parser
reads the ONNX input's shape with onnx, and the engine inspector returns the JSON the test gives.
"""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

DATA = Path(__file__).with_name("data")
API_10 = json.loads((DATA / "tensorrt-10.13-api.json").read_text(encoding="utf-8"))
REMOVED_11 = json.loads((DATA / "tensorrt-11-removed.json").read_text(encoding="utf-8"))["removed"]
# Names TensorRT gained after the 10.13 stubs, each with the version that has it, its value and its source.
ADDED = {
    "OnnxParserFlag.ADJUST_FOR_DLA": {
        "since": (11, 4),
        "value": 4,
        "source": "https://docs.nvidia.com/deeplearning/tensorrt/11.4.0/inference-library/dla-onnx-parser.html "
        "(kADJUST_FOR_DLA; the 11.5.0 page: Python members drop the leading k, set with IParser.set_flag); value 4 "
        "in the 10.16.0 C++ reference, nvonnxparser::OnnxParserFlag",
    },
}


@dataclass
class Recorder:
    """Every call and attribute write, in order: (name, args, kwargs); a write is ("Class.attr=", (value,), {})."""

    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)
    parsed: list[Path] = field(default_factory=list)  # ONNX files given to the parser (copied: temporaries vanish)
    parsed_models: list[Any] = field(default_factory=list)

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def args_of(self, name: str) -> list[tuple[Any, ...]]:
        return [c[1] for c in self.calls if c[0] == name]

    def kwargs_of(self, name: str) -> list[dict[str, Any]]:
        return [c[2] for c in self.calls if c[0] == name]


class Api:
    """The names one TensorRT major version has."""

    def __init__(self, major: int, version: str | None = None) -> None:
        removed = set(REMOVED_11) if major >= 11 else set()
        self.major = major
        self.version = version or ("10.13.0.35" if major == 10 else "11.0.0.1")
        minor = int(self.version.split(".")[1])
        self.module = {n for n in API_10["module"] if n not in removed} | {"__version__"}
        self.members: dict[str, set[str]] = {}
        self.enums: dict[str, dict[str, int]] = {}
        for cls, entry in API_10["classes"].items():
            if cls in removed:
                continue
            self.members[cls] = {m for m in entry["members"] if f"{cls}.{m}" not in removed}
            if entry["enum"]:
                self.enums[cls] = {m: v for m, v in entry["enum"].items() if f"{cls}.{m}" not in removed}
        for qual, added in ADDED.items():
            if (major, minor) >= added["since"]:
                cls, member = qual.split(".")
                self.members[cls].add(member)
                self.enums[cls][member] = added["value"]

    def check(self, cls: str, name: str) -> None:
        if name not in self.members.get(cls, set()):
            raise AttributeError(f"TensorRT {self.version} (stand-in) has no {cls}.{name}")


class EnumMember:
    """A member of a TensorRT enumeration: compares by value within its enumeration, converts to int."""

    def __init__(self, enum: str, name: str, value: int) -> None:
        self.enum, self.name, self.value = enum, name, value

    def __int__(self) -> int:
        return self.value

    def __index__(self) -> int:
        return self.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EnumMember) and (other.enum, other.value) == (self.enum, self.value)

    def __hash__(self) -> int:
        return hash((self.enum, self.value))

    def __le__(self, other: EnumMember) -> bool:
        return self.value <= other.value

    def __lt__(self, other: EnumMember) -> bool:
        return self.value < other.value

    def __repr__(self) -> str:
        return f"{self.enum.split('.')[-1]}.{self.name}"


class Enum:
    """A TensorRT enumeration: its members, and nothing else."""

    def __init__(self, api: Api, name: str) -> None:
        self._api, self._name = api, name
        self._members = {m: EnumMember(name, m, v) for m, v in api.enums[name].items()}

    def __getattr__(self, name: str) -> EnumMember:
        if name.startswith("__"):
            raise AttributeError(name)
        if name not in self._members:
            raise AttributeError(f"TensorRT {self._api.version} (stand-in) has no {self._name}.{name}")
        return self._members[name]


class Dims(list[int]):
    """trt.Dims: a list of ints."""


class Strict:
    """An object TensorRT hands out: reads and writes of public names are checked against the API and recorded."""

    api_name = ""

    def __init__(self, fake: FakeTensorRT, **state: Any) -> None:
        object.__setattr__(self, "_fake", fake)
        object.__setattr__(self, "_state", dict(state))

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_"):
            fake = object.__getattribute__(self, "_fake")
            fake.api.check(type(self).api_name, name)
            state = object.__getattribute__(self, "_state")
            if name in state:
                return state[name]
            try:
                attr = object.__getattribute__(self, name)
            except AttributeError:
                raise NotImplementedError(f"the stand-in does not implement {type(self).api_name}.{name}") from None
            if callable(attr):
                qual = f"{type(self).api_name}.{name}"

                def recorded(*args: Any, **kwargs: Any) -> Any:
                    fake.rec.calls.append((qual, args, kwargs))
                    return attr(*args, **kwargs)

                return recorded
            return attr
        return object.__getattribute__(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        fake = object.__getattribute__(self, "_fake")
        fake.api.check(type(self).api_name, name)
        fake.rec.calls.append((f"{type(self).api_name}.{name}=", (value,), {}))
        object.__getattribute__(self, "_state")[name] = value


class HostMemory(bytes):
    """IHostMemory: TensorRT's serialized bytes (supports memoryview, as the real one does)."""


class TimingCache(Strict):
    api_name = "ITimingCache"

    def serialize(self) -> HostMemory:
        return HostMemory(self._state["blob"])

    def combine(self, input_cache: TimingCache, ignore_mismatch: bool) -> bool:
        mine = self._state["blob"]
        self._state["blob"] = mine + b"+" + input_cache._state["blob"]
        return True


class Tensor(Strict):
    api_name = "ITensor"

    def set_dynamic_range(self, min: float, max: float) -> bool:
        self._state["dynamic_range"] = [min, max]
        return True


class Layer(Strict):
    """ILayer, one per node of the parsed ONNX, named after the node (as the real parser names them, unverified here),
    with one output tensor per node output."""

    api_name = "ILayer"

    def get_output(self, index: int) -> Tensor:
        return self._state["_outputs"][index]


class Network(Strict):
    api_name = "INetworkDefinition"

    def get_input(self, index: int) -> Tensor:
        return self._state["inputs"][index]

    def get_layer(self, index: int) -> Layer:
        return self._state["_layers"][index]


class Profile(Strict):
    api_name = "IOptimizationProfile"

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:
        pass


class Config(Strict):
    api_name = "IBuilderConfig"

    def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
        pass

    def set_flag(self, flag: EnumMember) -> None:
        self._state.setdefault("_flags", set()).add(flag)

    def clear_flag(self, flag: EnumMember) -> None:
        self._state.setdefault("_flags", set()).discard(flag)

    def add_optimization_profile(self, profile: Profile) -> int:
        return 0

    def create_timing_cache(self, serialized_timing_cache: bytes) -> TimingCache:
        return TimingCache(self._fake, blob=bytes(serialized_timing_cache) or b"fresh")

    def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
        if cache._state["blob"].startswith(b"other-device"):
            return False
        self._state["_cache"] = cache
        return True

    def get_timing_cache(self) -> TimingCache:
        return self._state["_cache"]


class Parser(Strict):
    api_name = "OnnxParser"

    def set_flag(self, flag: EnumMember) -> None:
        self._state.setdefault("_flags", set()).add(flag)

    def parse_from_file(self, model: str) -> bool:
        import onnx

        proto = onnx.load(model)
        self._fake.rec.parsed.append(Path(model))
        self._fake.rec.parsed_models.append(proto)
        dims = proto.graph.input[0].type.tensor_type.shape.dim
        shape = Dims([d.dim_value if d.HasField("dim_value") else -1 for d in dims])
        network = self._state["network"]
        network._state["inputs"] = [Tensor(self._fake, name=proto.graph.input[0].name, shape=shape)]
        network._state["num_inputs"] = 1
        layers = []
        for node in proto.graph.node:
            outputs = [Tensor(self._fake, name=o) for o in node.output]
            layers.append(Layer(self._fake, name=node.name, num_outputs=len(outputs), _outputs=outputs))
        network._state["_layers"] = layers
        network._state["num_layers"] = len(layers)
        return True


class Inspector(Strict):
    api_name = "EngineInspector"

    def get_engine_information(self, format: Any) -> str:
        return self._fake.layer_info


class Context(Strict):
    api_name = "IExecutionContext"

    def set_input_shape(self, name: str, shape: Any) -> bool:
        self._state["_shape"] = list(shape)
        return True

    def get_tensor_shape(self, name: str) -> Dims:
        batch = self._state["_shape"][0]
        return Dims([batch, self._fake.classes])

    def set_tensor_address(self, name: str, memory: int) -> bool:
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        self._fake.executed.append(stream_handle)
        return True


class Engine(Strict):
    api_name = "ICudaEngine"

    def create_engine_inspector(self) -> Inspector:
        return Inspector(self._fake)

    def get_tensor_name(self, index: int) -> str:
        return ["input", "logits"][index]

    def get_tensor_mode(self, name: str) -> EnumMember:
        mode = self._fake.module.TensorIOMode
        return mode.INPUT if name == "input" else mode.OUTPUT

    def get_tensor_dtype(self, name: str) -> EnumMember:
        return self._fake.module.DataType.FLOAT

    def get_tensor_shape(self, name: str) -> Dims:
        return Dims([-1, 3, 8, 8]) if name == "input" else Dims([-1, self._fake.classes])

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Dims]:
        lo, _, hi = self._fake.profile
        return [Dims([lo, 3, 8, 8]), Dims([lo, 3, 8, 8]), Dims([hi, 3, 8, 8])]

    def create_execution_context(self) -> Context:
        return Context(self._fake)


class Runtime(Strict):
    api_name = "Runtime"

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> Engine:
        return Engine(self._fake, num_io_tensors=2)


class Builder(Strict):
    api_name = "Builder"

    def create_network(self, flags: int = 0) -> Network:
        return Network(self._fake, num_inputs=0)

    def create_builder_config(self) -> Config:
        return Config(self._fake)

    def create_optimization_profile(self) -> Profile:
        return Profile(self._fake)

    def build_serialized_network(self, network: Network, config: Config) -> HostMemory | None:
        logger = self._state["logger"]
        severity = self._fake.module.ILogger.Severity
        for level, message in self._fake.build_log:
            logger.log(getattr(severity, level), message)
        return None if self._fake.build_fails else HostMemory(b"serialized engine")


@dataclass
class FakeTensorRT:
    """A stand-in `tensorrt` module for one TensorRT major version, and what was done with it."""

    major: int = 10
    num_dla_cores: int = 0
    version: str | None = None  # TensorRT version string; default 10.13.0.35 or 11.0.0.1 by major
    layer_info: str = '{"Layers": [], "Bindings": ["input", "logits"]}'
    build_log: list[tuple[str, str]] = field(default_factory=list)  # (severity name, message) logged while building
    build_fails: bool = False
    classes: int = 3
    profile: tuple[int, int, int] = (1, 1, 8)
    rec: Recorder = field(default_factory=Recorder)
    executed: list[int] = field(default_factory=list)  # stream handles execute_async_v3 ran on

    def __post_init__(self) -> None:
        self.api = Api(self.major, self.version)
        self.module = self._module()

    def _class(self, name: str, impl: type[Strict]) -> Any:
        fake = self

        def construct(*args: Any) -> Strict:
            fake.rec.calls.append((name, args, {}))
            obj = impl(fake)
            if name in ("Builder", "Runtime"):
                obj._state.update(logger=args[0], num_DLA_cores=fake.num_dla_cores)
            elif name == "OnnxParser":
                obj._state.update(network=args[0])
            return obj

        return construct

    def _base(self, name: str) -> type:
        """A TensorRT interface class edgeres subclasses (ILogger, IProgressMonitor), with its enumerations."""
        api = self.api
        attrs: dict[str, Any] = {"__init__": lambda self: None}
        nested = f"{name}.Severity"
        if nested in api.enums:
            attrs["Severity"] = Enum(api, nested)
            for member in api.enums[nested]:
                if member in api.members[name]:
                    attrs[member] = getattr(attrs["Severity"], member)
        return type(name, (), attrs)

    def _module(self) -> types.ModuleType:
        api = self.api
        m = types.ModuleType("tensorrt")
        m.__version__ = api.version  # type: ignore[attr-defined]
        provided: dict[str, Any] = {
            "Builder": self._class("Builder", Builder),
            "Runtime": self._class("Runtime", Runtime),
            "OnnxParser": self._class("OnnxParser", Parser),
            "Dims": Dims,
            "ILogger": self._base("ILogger"),
            "IProgressMonitor": self._base("IProgressMonitor"),
            "nptype": lambda dtype: "float32",
        }
        logger_cls = self._base("ILogger")
        provided["Logger"] = type("Logger", (logger_cls,), {"__init__": lambda self, min_severity=None: None})
        for name in api.enums:
            if "." not in name:
                provided[name] = Enum(api, name)
        unknown = set(provided) - api.module
        assert not unknown, f"the stand-in provides names TensorRT {api.version} lacks: {unknown}"
        for name, value in provided.items():
            setattr(m, name, value)

        def missing(name: str) -> Any:
            if name in api.module:
                raise NotImplementedError(f"the stand-in does not implement tensorrt.{name}")
            raise AttributeError(f"TensorRT {api.version} (stand-in) has no tensorrt.{name}")

        m.__getattr__ = missing  # type: ignore[method-assign]
        return m


@pytest.fixture
def install(monkeypatch: pytest.MonkeyPatch) -> Any:
    """install(FakeTensorRT(...)) puts the stand-in in sys.modules as `tensorrt` for one test and returns it."""

    def put(fake: FakeTensorRT) -> FakeTensorRT:
        monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
        return fake

    return put
