# CUDA wheels under uv2nix. Wheels are patched by autoPatchelfHook, which only finds libraries on its
# search path; the CUDA libraries torch and the JAX CUDA plugin load live in the locked nvidia-* wheels
# (site-packages/nvidia/cu13/lib, .../cudnn/lib, ...), so those directories are added to its search path:
# for an nvidia-* wheel, those of the nvidia-* wheels it declares (they form a DAG: no build cycle); for
# torch, triton and the JAX plugin, those of every nvidia-* wheel, because torch reaches cuBLAS & co.
# through cuda-toolkit's extras, not through a direct dependency. The driver libraries (libcuda, libnvidia-ml) belong
# to the host: they are left unresolved and found at run time (/run/opengl-driver/lib on NixOS, the
# NVIDIA container toolkit's mounts in a container).
{ lib, sitePackages }:
final: prev:
let
  driverLibs = [
    "libcuda.so.1"
    "libnvidia-ml.so.1"
  ];

  # nvidia-ml-py is pure Python (NVML bindings): no libraries to patch or to find.
  nvidiaWheels = lib.filter (name: lib.hasPrefix "nvidia-" name && name != "nvidia-ml-py") (
    lib.attrNames prev
  );

  libraryDeps =
    name:
    if lib.hasPrefix "nvidia-" name then
      lib.filter (dep: lib.hasPrefix "nvidia-" dep && prev ? ${dep}) (
        lib.attrNames (prev.${name}.passthru.dependencies or { })
      )
    else
      nvidiaWheels;

  patch =
    name:
    prev.${name}.overrideAttrs (old: {
      autoPatchelfIgnoreMissingDeps = driverLibs;
      preFixup =
        (old.preFixup or "")
        + lib.concatMapStrings (dep: ''
          addAutoPatchelfSearchPath ${final.${dep}}/${sitePackages}/nvidia
        '') (libraryDeps name);
    });

  cudaPackages = lib.filter (name: prev ? ${name}) (
    [
      "torch"
      "triton"
      "jax-cuda13-plugin"
      "jax-cuda13-pjrt"
    ]
    ++ nvidiaWheels
  );
in
lib.genAttrs cudaPackages patch
