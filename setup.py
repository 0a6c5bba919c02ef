"""Build driver: `pip install .` runs CMake + Ninja to build `resid_ext._C`.

Environment:
  RESID_CUDA        unset = build CUDA kernels when nvcc is found, 0 = never, 1 = required
  RESID_CUDA_ARCHS  CUDA architectures, CMake syntax (default "80;90": SASS + PTX for each)
  RESID_WERROR      1 (default) = CUDA and C++ warnings are errors, 0 = warnings only
  CMAKE_ARGS        extra arguments for the CMake configure step
  DEBUG             1 = Debug build with RESID_DCHECK assertions
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
VERSION = "0.1.0"


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        extdir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        cuda = os.environ.get("RESID_CUDA", "").strip()
        cuda_mode = {"": "AUTO", "0": "OFF", "1": "ON"}.get(cuda)
        if cuda_mode is None:
            raise RuntimeError(f"RESID_CUDA must be unset, 0 or 1, got {cuda!r}")
        debug = os.environ.get("DEBUG", "0") == "1"
        cmake_args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_BUILD_TYPE={'Debug' if debug else 'Release'}",
            f"-DRESID_CUDA={cuda_mode}",
            f"-DRESID_VERSION={VERSION}",
            f"-DRESID_WERROR={'OFF' if os.environ.get('RESID_WERROR') == '0' else 'ON'}",
            "-GNinja",
        ]
        if os.environ.get("RESID_CUDA_ARCHS"):
            cmake_args.append(f"-DRESID_CUDA_ARCHS={os.environ['RESID_CUDA_ARCHS']}")
        if os.environ.get("CMAKE_ARGS"):
            cmake_args += os.environ["CMAKE_ARGS"].split()
        # A fresh build directory per interpreter/config: a CMake cache left by an earlier
        # isolated pip build points at a deleted build environment.
        build_temp = Path(self.build_temp) / f"cmake-{cuda_mode.lower()}"
        build_temp.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_temp), *cmake_args], check=True)
        subprocess.run(["cmake", "--build", str(build_temp), "--parallel"], check=True)


setup(
    version=VERSION,
    packages=find_packages("python") + ["resid_ext"],
    package_dir={"": "python", "resid_ext": "resid_ext"},
    package_data={"resid": ["py.typed", "datasets/*/*"], "resid_ext": ["py.typed", "*.pyi"]},
    ext_modules=[CMakeExtension("resid_ext._C")],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
