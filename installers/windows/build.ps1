# Build the Windows installer: PyInstaller folder + Inno Setup, with ONNX Runtime's DirectML build.
#
# On Windows 10/11 x64, in PowerShell, from the repository root:
#     powershell -ExecutionPolicy Bypass -File installers\windows\build.ps1          # DirectML
#     powershell -ExecutionPolicy Bypass -File installers\windows\build.ps1 -Cpu     # CPU only
# Needs: Python 3.11 x64 from python.org (the "py" launcher), Inno Setup 6.3+ (ISCC.exe).
# Output: dist\smolvlm-desktop\ (the app folder) and dist\SmolVLM-Desktop-<version>-windows-x64-setup.exe
#
# Why DirectML: it runs the model on any DirectX 12 GPU (AMD, Intel, NVIDIA) with no vendor
# toolkit. onnxruntime-directml is in sustained engineering (fixes only; its last release lags
# the CPU package), so -Cpu builds the plain CPU package as the fall-back installer. Either way
# the app falls back to the CPU per graph when DirectML cannot run one, and says so (status bar;
# `caption --json` prints the provider of each graph).
param(
    [switch]$Cpu,
    [string]$Python = "py -3.11",
    [string]$Iscc = "${env:ProgramFiles(x86)}\Inno Setup 6\ISCC.exe"
)
$ErrorActionPreference = "Stop"
Set-Location (Resolve-Path (Join-Path $PSScriptRoot "..\.."))

# Native programs do not throw in PowerShell: stop on a non-zero exit code ourselves.
function Invoke-Checked {
    param([string]$Exe, [string[]]$Arguments)
    Write-Host "+ $Exe $($Arguments -join ' ')"
    & $Exe @Arguments
    if ($LASTEXITCODE -ne 0) { throw "$Exe exited with $LASTEXITCODE" }
}

$version = (Select-String -Path pyproject.toml -Pattern '^version = "([^"]+)"').Matches[0].Groups[1].Value  # the one place it is written
$venv = "build\installer-venv"
$py = "$venv\Scripts\python.exe"

# A clean build environment: the app and its runtime dependencies, PyInstaller, nothing else
# (no torch or transformers; the spec excludes them anyway).
$parts = $Python -split " "
$launcher = $parts[0]
$launcherArgs = @($parts | Select-Object -Skip 1)
Invoke-Checked $launcher ($launcherArgs + @("-m", "venv", "--clear", $venv))
Invoke-Checked $py @("-m", "pip", "install", "--upgrade", "pip")
Invoke-Checked $py @("-m", "pip", "install", ".", "pyinstaller==6.22.3")
if (-not $Cpu) {
    # Both packages install the same "onnxruntime" module: remove the CPU one first.
    Invoke-Checked $py @("-m", "pip", "uninstall", "-y", "onnxruntime")
    Invoke-Checked $py @("-m", "pip", "install", "onnxruntime-directml==1.24.4")
}
Invoke-Checked $py @("-c", "import onnxruntime as o; print('ONNX Runtime', o.__version__, o.get_available_providers())")

Invoke-Checked $py @("installers\build_bundle.py")

# Smoke test of the folder before packaging it: a chat and a batch on the demo model, offscreen.
Invoke-Checked "dist\smolvlm-desktop\smolvlm-desktop.exe" @("--self-test")
Invoke-Checked "dist\smolvlm-desktop\smolvlm-desktop.exe" @("caption", "resources\samples\house.png", "--model", "demo", "--json", "--max-new-tokens", "4", "--provider", "auto")

if (-not (Test-Path $Iscc)) { throw "Inno Setup's ISCC.exe not found at $Iscc (pass -Iscc PATH)" }
Invoke-Checked $Iscc @("/DAppVersion=$version", "installers\windows\smolvlm-desktop.iss")
Write-Host "built dist\SmolVLM-Desktop-$version-windows-x64-setup.exe"
