{
  description = "balanced_pi0: the locked environment of uv.lock (uv2nix), a dev shell, and an OCI image";

  # Every input is pinned in flake.lock; uv2nix and its helpers follow the one nixpkgs.
  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

    pyproject-nix = {
      url = "github:pyproject-nix/pyproject.nix";
      inputs.nixpkgs.follows = "nixpkgs";
    };

    uv2nix = {
      url = "github:pyproject-nix/uv2nix";
      inputs.pyproject-nix.follows = "pyproject-nix";
      inputs.nixpkgs.follows = "nixpkgs";
    };

    pyproject-build-systems = {
      url = "github:pyproject-nix/build-system-pkgs";
      inputs.pyproject-nix.follows = "pyproject-nix";
      inputs.uv2nix.follows = "uv2nix";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    {
      self,
      nixpkgs,
      pyproject-nix,
      uv2nix,
      pyproject-build-systems,
      ...
    }:
    let
      inherit (nixpkgs) lib;

      # uv.lock resolves CUDA wheels for x86_64 Linux only.
      systems = [ "x86_64-linux" ];

      # Keep equal to balanced_pi0.determinism.DETERMINISM_ENV and the Dockerfile's ENV (a test checks).
      determinismEnv = {
        XLA_FLAGS = "--xla_gpu_deterministic_ops=true --xla_cpu_multi_thread_eigen=false --xla_cpu_max_isa=AVX2 --xla_cpu_enable_platform_dependent_math=false --xla_cpu_experimental_ynn_fusion_type= --xla_cpu_use_xnnpack=false";
        ATEN_CPU_CAPABILITY = "avx2";
        ONEDNN_MAX_CPU_ISA = "AVX2";
        MKL_CBWR = "COMPATIBLE";
        OPENBLAS_CORETYPE = "Haswell";
        OMP_NUM_THREADS = "1";
        CUBLAS_WORKSPACE_CONFIG = ":4096:8";
        NVIDIA_TF32_OVERRIDE = "0";
        PYTHONHASHSEED = "0";
        MUJOCO_GL = "egl";
        PYOPENGL_PLATFORM = "egl";
      };

      # The same interpreter minor as .python-version and the Dockerfile.
      pythonAttr = "python312";

      # Versions the image labels carry, read from uv.lock itself (the Dockerfile states the same).
      lockedPackages = (builtins.fromTOML (builtins.readFile ./uv.lock)).package;
      lockedVersion =
        name: (builtins.head (builtins.filter (p: p.name == name) lockedPackages)).version;

      workspace = uv2nix.lib.workspace.loadWorkspace { workspaceRoot = ./.; };

      # Wheels, exactly the files uv.lock lists (with their hashes); sdists only where no wheel exists.
      lockOverlay = workspace.mkPyprojectOverlay { sourcePreference = "wheel"; };

      pythonSetFor =
        pkgs:
        let
          python = pkgs.${pythonAttr};
        in
        (pkgs.callPackage pyproject-nix.build.packages { inherit python; }).overrideScope (
          lib.composeManyExtensions [
            pyproject-build-systems.overlays.wheel
            lockOverlay
            (import ./nix/build-systems.nix)
            (import ./nix/cuda.nix {
              inherit lib;
              inherit (python) sitePackages;
            })
          ]
        );

      perSystem =
        system:
        let
          pkgs = nixpkgs.legacyPackages.${system};
          pythonSet = pythonSetFor pkgs;

          # `uv sync --locked --extra cuda --no-dev`: the project with its cuda extra.
          runtimeEnv = pythonSet.mkVirtualEnv "balanced-pi0-env" { balanced-pi0 = [ "cuda" ]; };
          # Every extra and group (pytest, ruff, hadolint), with src/ editable, for the shell.
          editableSet = pythonSet.overrideScope (
            workspace.mkEditablePyprojectOverlay { root = "$REPO_ROOT"; }
          );
          devEnv = editableSet.mkVirtualEnv "balanced-pi0-dev-env" workspace.deps.all;

          # EGL dispatch (glvnd) with Mesa as the CPU vendor; fonts for the paper.
          systemLibs = [
            pkgs.libglvnd
            pkgs.mesa
          ];
          eglEnv = {
            LD_LIBRARY_PATH = lib.makeLibraryPath systemLibs;
            __EGL_VENDOR_LIBRARY_DIRS = "${pkgs.mesa}/share/glvnd/egl_vendor.d";
            FONTCONFIG_FILE = pkgs.makeFontsConf { fontDirectories = [ pkgs.dejavu_fonts ]; };
          };

          dockerImage = pkgs.dockerTools.buildLayeredImage {
            name = "balanced-pi0";
            tag = "nix";
            contents = [
              runtimeEnv
              pkgs.bashInteractive
              pkgs.coreutils
              pkgs.git
              pkgs.dejavu_fonts
            ]
            ++ systemLibs;
            # /tmp for DVC and matplotlib, /workspace for the mounted checkout.
            extraCommands = ''
              mkdir -p tmp workspace
              chmod 1777 tmp
            '';
            config = {
              Cmd = [
                "dvc"
                "repro"
              ];
              WorkingDir = "/workspace";
              Labels = {
                "balanced_pi0.python" = pythonSet.python.pythonVersion;
                "balanced_pi0.torch" = lockedVersion "torch";
                "balanced_pi0.jax" = lockedVersion "jax";
              };
              User = "1000:1000";
              Env = lib.mapAttrsToList (name: value: "${name}=${value}") (
                determinismEnv
                // eglEnv
                // {
                  PATH = "${runtimeEnv}/bin:/bin";
                  HF_HUB_OFFLINE = "1";
                  HOME = "/tmp";
                  # The NVIDIA container toolkit mounts the driver's libcuda and EGL vendor here.
                  LD_LIBRARY_PATH = "/usr/lib/x86_64-linux-gnu:/usr/lib64:${eglEnv.LD_LIBRARY_PATH}";
                  NVIDIA_DRIVER_CAPABILITIES = "compute,utility,graphics";
                }
              );
            };
          };
        in
        {
          packages = {
            default = runtimeEnv;
            inherit runtimeEnv dockerImage;
          };

          devShells.default = pkgs.mkShell {
            packages = [
              devEnv
              pkgs.uv
              pkgs.git
            ]
            ++ systemLibs;
            env = determinismEnv // {
              inherit (eglEnv) __EGL_VENDOR_LIBRARY_DIRS FONTCONFIG_FILE;
              # The environment is Nix's: uv must neither sync it nor fetch another interpreter.
              UV_NO_SYNC = "1";
              UV_PYTHON = pythonSet.python.interpreter;
              UV_PYTHON_DOWNLOADS = "never";
              HF_HUB_OFFLINE = "1";
            };
            shellHook = ''
              unset PYTHONPATH
              export REPO_ROOT=$(git rev-parse --show-toplevel)
              # NixOS puts the GPU driver in /run/opengl-driver/lib; Mesa EGL covers the CPU.
              export LD_LIBRARY_PATH=/run/opengl-driver/lib:${eglEnv.LD_LIBRARY_PATH}''${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
            '';
          };
        };

      bySystem = lib.genAttrs systems perSystem;
    in
    {
      packages = lib.mapAttrs (_: outputs: outputs.packages) bySystem;
      devShells = lib.mapAttrs (_: outputs: outputs.devShells) bySystem;
      lib = { inherit determinismEnv pythonAttr; };
    };
}
