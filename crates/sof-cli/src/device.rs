//! The binary edge: the only place that names a backend. `--device` picks one at run time among
//! those compiled in (Cargo features `wgpu`, `cuda`; the CPU backend is always there).

use burn::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    /// Pure-Rust CPU backend (burn's flex).
    Cpu,
    /// GPU through wgpu (Vulkan / Metal / DX12); needs a build with `--features wgpu`.
    Wgpu,
    /// NVIDIA GPU through CUDA; needs a build with `--features cuda`.
    Cuda,
}

pub fn device(arg: DeviceArg) -> anyhow::Result<Device> {
    match arg {
        DeviceArg::Cpu => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        DeviceArg::Wgpu => Ok(Device::wgpu(burn::prelude::DeviceKind::DefaultDevice)),
        #[cfg(feature = "cuda")]
        DeviceArg::Cuda => Ok(Device::cuda(0usize)),
        #[allow(unreachable_patterns)]
        other => anyhow::bail!(
            "this build of sof has no {other:?} backend; rebuild with `cargo build --release -p sof-cli --features {}`",
            format!("{other:?}").to_lowercase()
        ),
    }
}
