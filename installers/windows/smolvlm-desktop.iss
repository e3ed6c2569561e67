; Inno Setup script: a Windows installer for the PyInstaller folder dist\smolvlm-desktop.
; Built by installers\windows\build.ps1 (which builds the folder first); by hand:
;   "%ProgramFiles(x86)%\Inno Setup 6\ISCC.exe" /DAppVersion=0.1.0 installers\windows\smolvlm-desktop.iss
; Needs Inno Setup 6.3 or later (for "x64compatible").
;
; Installs per user by default (no administrator prompt; into %LOCALAPPDATA%\Programs), or for
; all users if the user picks that in the first dialog. Models, settings and the library live in
; the user's own folders (%LOCALAPPDATA%\smolvlm-desktop), so uninstalling leaves them alone.

#ifndef AppVersion
  #define AppVersion "0.1.0"
#endif
#define AppName "SmolVLM Desktop"
#define GuiExe "SmolVLM Desktop.exe"
#define CliExe "smolvlm-desktop.exe"
; The repository root, from this file's folder.
#define Root AddBackslash(SourcePath) + "..\.."

[Setup]
; The AppId identifies the app to Windows across versions (upgrades, uninstall): never change it.
AppId={{07508EB3-FE0C-4222-8870-1093E301F5D8}
AppName={#AppName}
AppVersion={#AppVersion}
AppPublisher=SmolVLM Desktop developers
AppComments=Understand images entirely offline
DefaultDirName={autopf}\{#AppName}
DefaultGroupName={#AppName}
DisableProgramGroupPage=yes
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=dialog
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
MinVersion=10.0.17763
OutputDir={#Root}\dist
OutputBaseFilename=SmolVLM-Desktop-{#AppVersion}-windows-x64-setup
SetupIconFile={#Root}\resources\icons\smolvlm-desktop.ico
UninstallDisplayIcon={app}\{#GuiExe}
UninstallDisplayName={#AppName}
Compression=lzma2/max
SolidCompression=yes
WizardStyle=modern

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"; Flags: unchecked

[Files]
; The whole one-folder app: the two programs and _internal\ (Python, Qt, ONNX Runtime with
; DirectML, the demo model).
Source: "{#Root}\dist\smolvlm-desktop\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{autoprograms}\{#AppName}"; Filename: "{app}\{#GuiExe}"; Comment: "Understand images entirely offline"
Name: "{autodesktop}\{#AppName}"; Filename: "{app}\{#GuiExe}"; Tasks: desktopicon

[Run]
Filename: "{app}\{#GuiExe}"; Description: "{cm:LaunchProgram,{#AppName}}"; Flags: nowait postinstall skipifsilent
