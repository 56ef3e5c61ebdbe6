from setuptools import find_packages, setup

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()

vision = ["torchvision>=0.16"]
setup(
    name="bnn",
    version="0.2.0.dev0",
    description="Binary neural networks in PyTorch: binarize any model, train with the papers' recipes, "
                "count FLOPs/BOPs, run multiplication-free",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.9",
    # the top-level recipes/ folder ships inside the package as bnn/recipes (bnn.engine.shipped finds it
    # there in an installed wheel, and at <checkout>/recipes in a source checkout or editable install)
    packages=find_packages(include=["bnn", "bnn.*"]) + ["bnn.recipes"],
    package_dir={"bnn.recipes": "recipes"},
    include_package_data=True,
    package_data={"bnn.inference": ["csrc/*.cpp", "csrc/*.h"], "bnn.recipes": ["*.yaml"]},
    install_requires=["torch>=2.1", "pyyaml>=5.1", "pthflops>=0.4", "packaging", "ninja"],
    extras_require={
        "vision": vision,
        "examples": vision + ["scikit-learn>=1.0", "tqdm", "matplotlib"],
        "test": vision + ["pytest>=7", "hypothesis>=6", "scikit-learn>=1.0", "matplotlib", "tqdm"],
    },
    entry_points={"console_scripts": ["bnn = bnn.cli:main"]},
    classifiers=[
        "License :: OSI Approved :: BSD License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
