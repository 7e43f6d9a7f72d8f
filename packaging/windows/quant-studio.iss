; Inno Setup script for Quant Studio on Windows (NOT built or tested in this project's CI: no Windows
; machine). Build the bundle first on Windows with the same spec:
;   .venv\Scripts\pyinstaller --noconfirm --distpath dist --workpath build\pyinstaller packaging\quant-studio.spec
; then compile this script with Inno Setup 6 (iscc packaging\windows\quant-studio.iss).
#define AppVersion GetEnv("QUANT_STUDIO_VERSION")
#if AppVersion == ""
  #define AppVersion "0.1.0"
#endif

[Setup]
AppId={{6C3E5C1E-9C53-4E0F-9A31-2B7F4C9D1A10}
AppName=Quant Studio
AppVersion={#AppVersion}
AppPublisher=Quant Studio developers
DefaultDirName={autopf}\Quant Studio
DefaultGroupName=Quant Studio
OutputDir=..\..\dist
OutputBaseFilename=quant-studio-{#AppVersion}-windows-x64-setup
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
Compression=lzma2/max
SolidCompression=yes
ChangesAssociations=yes
PrivilegesRequiredOverridesAllowed=dialog

[Files]
Source: "..\..\dist\quant-studio\*"; DestDir: "{app}"; Flags: recursesubdirs ignoreversion

[Icons]
Name: "{group}\Quant Studio"; Filename: "{app}\quant-studio.exe"
Name: "{autodesktop}\Quant Studio"; Filename: "{app}\quant-studio.exe"; Tasks: desktopicon

[Tasks]
Name: "desktopicon"; Description: "Create a desktop icon"; Flags: unchecked

[Registry]
; .gguf files open in Quant Studio
Root: HKA; Subkey: "Software\Classes\.gguf"; ValueType: string; ValueName: ""; ValueData: "QuantStudio.gguf"; Flags: uninsdeletevalue
Root: HKA; Subkey: "Software\Classes\QuantStudio.gguf"; ValueType: string; ValueName: ""; ValueData: "GGUF model"; Flags: uninsdeletekey
Root: HKA; Subkey: "Software\Classes\QuantStudio.gguf\shell\open\command"; ValueType: string; ValueName: ""; ValueData: """{app}\quant-studio.exe"" ""%1"""

[Run]
Filename: "{app}\quant-studio.exe"; Description: "Start Quant Studio"; Flags: nowait postinstall skipifsilent
