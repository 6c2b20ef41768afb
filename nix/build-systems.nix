# Build backends for the sdists uv.lock leaves to be built (uv.lock records no build-system). With
# sourcePreference = "wheel", uv2nix picks a wheel for every locked package but one: the
# antlr4-python3-runtime sdist (pure Python, setup.py), which builds with setuptools.
final: prev: {
  antlr4-python3-runtime = prev.antlr4-python3-runtime.overrideAttrs (old: {
    nativeBuildInputs = (old.nativeBuildInputs or [ ]) ++ final.resolveBuildSystem { setuptools = [ ]; };
  });
}
