from setuptools import find_packages, setup

package_name = "edge_vlm_cameras"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="edge_vlm maintainers",
    maintainer_email="maintainers@edge-vlm.dev",
    description="Live sources of edge_vlm: iniVation / Prophesee event cameras, OpenCV RGB source",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            # installed to lib/edge_vlm_cameras/ (setup.cfg): `ros2 run edge_vlm_cameras <exe>`
            "edge_vlm_camera_dv = edge_vlm_cameras.camera_dv:main",
            "edge_vlm_camera_rgb = edge_vlm_cameras.camera_rgb:main",
            "edge_vlm_camera_metavision = edge_vlm_cameras.camera_metavision:main",
        ],
    },
)
