# CUDA wheels under uv2nix. Wheels are patched by autoPatchelfHook, which only finds libraries on its
# search path; the CUDA libraries torch and the JAX CUDA plugin load live in the locked nvidia-* wheels
# (site-packages/nvidia/cu13/lib, .../cudnn/lib, ...), so each CUDA package gets the site-packages of the
# nvidia-* wheels it depends on added to that path. The driver libraries (libcuda, libnvidia-ml) belong
# to the host: they are left unresolved and found at run time (/run/opengl-driver/lib on NixOS, the
# NVIDIA container toolkit's mounts in a container).
{ lib, sitePackages }:
final: prev:
let
  driverLibs = [
    "libcuda.so.1"
    "libnvidia-ml.so.1"
  ];

  # Only declared dependencies: wheels depend on each other in a DAG, so this adds no build cycle.
  nvidiaDeps =
    drv:
    lib.filter (name: lib.hasPrefix "nvidia-" name && prev ? ${name}) (
      lib.attrNames (drv.passthru.dependencies or { })
    );

  patch =
    name:
    prev.${name}.overrideAttrs (old: {
      autoPatchelfIgnoreMissingDeps = driverLibs;
      preFixup =
        (old.preFixup or "")
        + lib.concatMapStrings (dep: ''
          addAutoPatchelfSearchPath ${final.${dep}}/${sitePackages}/nvidia
        '') (nvidiaDeps prev.${name});
    });

  cudaPackages = lib.filter (name: prev ? ${name}) (
    [
      "torch"
      "triton"
      "jax-cuda13-plugin"
      "jax-cuda13-pjrt"
    ]
    ++ lib.filter (lib.hasPrefix "nvidia-") (lib.attrNames prev)
  );
in
lib.genAttrs cudaPackages patch
